"""Profile: where a quick-preset training epoch goes, in the d2eee07 code and today's.

For each code version, on the same cohort, weights and batches (one compute thread, thread
CPU time, median over `--repeats` passes over one epoch's batches, the versions interleaved):

  step      a whole training step per batch: data loading + forward + BCE + auxiliary losses
            + backward + Adam step (an epoch of MIRACL adds its contrastive loss and the
            epoch-end work; see bench_epoch.py for the whole loop)
  data      iterating the epoch's DataLoader alone (reading + collating)
  LSTM      the EHR encoder's BiLSTM forward + backward (gradient of a fixed random
            projection of its outputs and final states)
  fusion    the fusion transformer layers forward + backward, on the inputs the backbone
            builds for them (gradient of a fixed random projection of the prefix rows)
  rest      step - data - LSTM - fusion (note projection, MoE, heads, losses, optimiser)
  eval      one eval-mode pass over the test split (as the loop's evaluation)

Usage: python bench/profile_epoch.py [--cohort DIR] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as functional
from torch.utils.data import DataLoader

from miracl_grid.data.dataset import CohortData, CohortDataset, collate
from miracl_grid.data.prepare import prepare_cohort
from miracl_grid.grid.presets import preset_runtime, preset_trial_defaults
from original_code import ORIGINAL_COMMIT, import_original
from miracl_grid.trainables.backbones import build_backbone
from miracl_grid.trainables.backbones.encoders import bidirectional_lstm
from miracl_grid.trainables.backbones.flexcare import FusionLayout, fuse
from miracl_grid.trainables.config import TrialConfig

PARTS = ("step", "data", "LSTM", "fusion", "eval")


def cpu_seconds(work) -> float:
    started = time.thread_time()
    work()
    return time.thread_time() - started


class Version:
    """One code version's backbone plus how to run its LSTM and fusion layers alone."""

    def __init__(self, name: str, model: torch.nn.Module, original: bool):
        self.name, self.model, self.original = name, model, original

    def lstm(self, batch: dict) -> torch.Tensor:
        encoder = self.model.series_encoder
        length = torch.where(batch["has_series"], batch["series_length"], torch.zeros_like(batch["series_length"]))
        if self.original:
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
            packed = pack_padded_sequence(batch["series"], length.clamp(min=1, max=batch["series"].shape[1]),
                                          batch_first=True, enforce_sorted=False)
            outputs, (final, _) = encoder.lstm(packed)
            outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=batch["series"].shape[1])
            last = torch.cat([final[-2], final[-1]], dim=-1)
        else:
            outputs, last = bidirectional_lstm(encoder.lstm, batch["series"], length)
        mask = (torch.arange(outputs.shape[1])[None] < length[:, None])[..., None]
        return (outputs * mask).sum() * 1e-3 + last.sum() * 1e-3

    def encode(self, batch: dict):
        with torch.no_grad():
            return self.model.encode(batch)

    def fusion(self, encoded) -> torch.Tensor:
        model = self.model
        size = encoded.ehr_tokens.shape[0]
        prefix = torch.cat([model.task_token[None], model.combination_tokens], 0).expand(size, -1, -1)
        ehr = (encoded.ehr_tokens + model.modality_types[0]).requires_grad_()
        note = (encoded.note_tokens + model.modality_types[1]).requires_grad_()
        if self.original:
            sequence = torch.cat([prefix, ehr, note], dim=1)
            allowed = model.attention_mask(encoded.ehr_mask, encoded.note_mask)
            for layer in model.fusion:
                sequence = layer(sequence, allowed)
            out = sequence[:, :4]
        else:
            layout = FusionLayout.of(encoded.ehr_mask, encoded.note_mask)
            out = fuse(model.fusion, layout, layout.pack(prefix, ehr, note))
        return out.sum() * 1e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", default=None, help="materialised cohort (default: the quick preset's embedded one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)   # as the loop does
    workspace = Path(tempfile.mkdtemp(prefix="profile_epoch_"))
    import_original(workspace / "original")
    from trainables_original.backbones import build_backbone as build_original
    from trainables_original.config import TrialConfig as OriginalConfig

    quick = preset_trial_defaults("quick")
    if args.cohort:
        cohort = Path(args.cohort)
    else:
        synthetic = preset_runtime("quick")["synthetic_cohort"]
        cohort = prepare_cohort("synthetic", workspace / "cohort", patients=synthetic["num_patients"],
                                hours=synthetic["max_hours"], max_tokens=quick["max_note_tokens"],
                                max_bins=quick["max_series_bins"], progress=False)
    trial = {k: v for k, v in quick.items() if k in OriginalConfig.field_names()}
    config = TrialConfig.from_dict(trial)
    data = CohortData(cohort)
    options = dict(num_labels=data.labels.shape[1], series_channels=int(data.manifest["series"]["channels"]),
                   note_dim=data.note_dim)
    torch.manual_seed(config.seed)
    today = build_backbone(config.backbone, config, **options)
    original = build_original(config.backbone, OriginalConfig.from_dict(trial), **options)
    original.load_state_dict(today.state_dict())
    versions = [Version(ORIGINAL_COMMIT, original, True), Version("today", today, False)]
    dataset = CohortDataset(data, data.rows("train"), max_series_bins=config.max_series_bins,
                            max_note_tokens=config.max_note_tokens)
    test_set = CohortDataset(data, data.rows("test"), max_series_bins=config.max_series_bins,
                             max_note_tokens=config.max_note_tokens)
    order = np.random.default_rng(0).permutation(len(dataset))
    sampler = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    batches = list(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate))
    test_batches = [np.arange(len(test_set))[i:i + 256] for i in range(0, len(test_set), 256)]
    times = {version.name: {part: [] for part in PARTS} for version in versions}

    for _ in range(args.repeats):
        for version in versions:
            model = version.model
            optimizer = torch.optim.Adam(model.parameters(), lr=0.0)   # same work, weights unchanged

            def steps():
                for batch in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate):
                    output = model(batch)
                    loss = functional.binary_cross_entropy_with_logits(output.logits, batch["labels"]) \
                        + sum(output.auxiliary_losses.values())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

            def data_only():
                for _batch in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate):
                    pass

            def part(run, inputs):
                def work():
                    for item in inputs:
                        model.zero_grad(set_to_none=True)
                        run(item).backward()
                return work

            @torch.inference_mode()
            def evaluate():
                model.eval()
                for batch in DataLoader(test_set, batch_sampler=test_batches, collate_fn=collate):
                    torch.sigmoid(model(batch).logits)
                model.train()

            model.train()
            record = times[version.name]
            record["step"].append(cpu_seconds(steps))
            record["data"].append(cpu_seconds(data_only))
            record["LSTM"].append(cpu_seconds(part(version.lstm, batches)))
            encoded = [version.encode(batch) for batch in batches]
            record["fusion"].append(cpu_seconds(part(version.fusion, encoded)))
            record["eval"].append(cpu_seconds(evaluate))

    print(f"cohort {cohort}: {len(batches)} train batches of {config.batch_size}, {len(test_set)} test stays; "
          f"1 thread, thread CPU s, median of {args.repeats}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    medians = {name: {part: statistics.median(values) for part, values in record.items()}
               for name, record in times.items()}
    print(f"{'':10s}" + "".join(f"{p:>16s}" for p in ("epoch(step+eval)", "data", "LSTM", "fusion", "rest", "eval")))
    for name, part in medians.items():
        epoch = part["step"] + part["eval"]
        rest = part["step"] - part["data"] - part["LSTM"] - part["fusion"]
        cells = [epoch, part["data"], part["LSTM"], part["fusion"], rest, part["eval"]]
        print(f"{name:10s}" + f"{epoch:15.3f}s" + "".join(f"{c:8.3f}s {c / epoch:5.1%}" for c in cells[1:]))
    original_part, today_part = medians[ORIGINAL_COMMIT], medians["today"]
    print("speed-up " + ", ".join(f"{p} {original_part[p] / today_part[p]:.2f}x" for p in PARTS))


if __name__ == "__main__":
    main()
