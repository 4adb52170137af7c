"""The single training loop every Ray Train worker runs (METHOD §3–§8, §7 schedule).

`train_loop_per_worker(loop_config)` is what `TorchTrainer` launches; it wraps `run_training`,
which is also callable in a plain process (tests, debugging) with a `report` function.

Per epoch, identically on every rank:
  1. train on this rank's shard of every global batch (`miracl_grid.trainables.batching`), recording
     per-pair probabilities into `PairStatistics` (METHOD §3) — or, with
     ``selection_pass="eval"``, record them afterwards from an eval-mode, no-grad pass over the
     whole train split (the model as it ends the epoch: no dropout, no noisy gating);
  2. gather the statistics by instance index onto every rank, close the epoch's bits;
  3. let the method update its state (MIRACL: selection, batched GMMs, correction — §3–§5);
  4. compute correction and mechanism diagnostics *outside* the method, against the clean
     labels it never sees (§8; `miracl_grid.trainables.diagnostics`), evaluate on the clean test split,
     step the cosine schedule;
  5. report one metrics dict (+ a checkpoint that resumes bit-for-bit: model, optimiser,
     scheduler, method state, statistics history; RNG streams are re-derived from
     (seed, epoch, rank) at every epoch start, so no RNG state needs saving).

`loop_config` keys: ``trial`` (flat TrialConfig dict), ``cohort_dir``, optional
``artifact_dir`` (selection artifacts, rank 0 writes), ``checkpoint_root`` (the trial's
`CheckpointStore`, for `run_with_store`/`train_loop_per_worker`), ``use_gpu`` (the trial
reserved GPUs: train on this worker's GPU, `miracl_grid.trainables.devices`), ``node_local_cache`` (a folder
on the worker's node: read a copy of the cohort staged there, `miracl_grid.data.staging`), ``fail_once``
({epoch, rank, marker[, action]}: test hook, once per marker: that worker exits, or with action
"hold" stops there until its node is killed), ``threads`` (torch intra-op threads).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from miracl_grid.data.dataset import CohortData, CohortDataset, collate
from miracl_grid.data.noise import apply_noise, check_balanced_rho_neg
from miracl_grid.data.staging import stage_cohort
from miracl_grid.trainables import distributed
from miracl_grid.trainables.backbones import BACKBONES, build_backbone
from miracl_grid.trainables.batching import epoch_batches, shard, shard_weight
from miracl_grid.trainables.checkpoints import HISTORY_FILE, CheckpointStore
from miracl_grid.trainables.config import TrialConfig
from miracl_grid.trainables.devices import loader_options, worker_device
from miracl_grid.trainables.diagnostics import (class_selection_metrics, correction_error_metrics, memorisation_metrics,
                                    same_patient_share, selection_signal_aucs)
from miracl_grid.trainables.methods import build_method
from miracl_grid.trainables.metrics import classification_metrics, correction_diagnostics
from miracl_grid.trainables.selection import oriented_rank
from miracl_grid.trainables.selection_artifact import artifact_path, write_selection_artifact
from miracl_grid.trainables.statistics import PairStatistics

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
EVAL_BATCH_SIZE = 256

ReportFunction = Callable[[dict[str, Any], "str | None"], None]


@dataclass
class TrainingState:
    """Everything the loop needs to resume bit-for-bit (saved in each checkpoint)."""

    epoch: int
    model: dict
    optimizer: dict
    scheduler: dict
    method: dict
    statistics: dict
    history: list


def seed_everything(seed: int, epoch: int, rank: int, deterministic: bool) -> None:
    """Derive this epoch's RNG streams from (seed, epoch, rank): resume needs no saved RNG."""
    stream = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(stream)
    np.random.seed(stream % (2**32))
    # set either way: a reused Tune actor must not keep the previous trial's setting
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def run_training(loop_config: dict, report: ReportFunction,
                 resume_state: TrainingState | None = None) -> list[dict]:
    """Train one trial; call `report(metrics, checkpoint_dir_or_None)` once per epoch.

    Returns the list of per-epoch metrics dicts (identical on every rank).
    """
    trial_start = time.perf_counter()
    config = TrialConfig.from_dict(loop_config["trial"]).validate(tuple(BACKBONES))
    if loop_config.get("threads"):
        torch.set_num_threads(int(loop_config["threads"]))
    rank, world = distributed.rank(), distributed.world_size()
    device = worker_device(use_gpu=bool(loop_config.get("use_gpu")))
    placement = _placement(device)

    data = CohortData(loop_config["cohort_dir"], text_key=config.text_feature_key or None)
    if loop_config.get("node_local_cache"):   # read a node-local copy, not shared storage, every epoch
        data = CohortData(stage_cohort(data.directory, loop_config["node_local_cache"], text_keys=[data.text_key]),
                          text_key=data.text_key)
    train_rows, test_rows = data.rows("train"), data.rows("test")
    clean_train = data.labels[train_rows]
    if config.noise_model == "balanced":   # the sweep's ρ− is the one used; it must be this cohort's
        check_balanced_rho_neg(config.rho_pos, config.rho_neg, l_avg=data.manifest["l_avg_train"],
                               num_labels=clean_train.shape[1])
    noise = apply_noise(clean_train, config.noise_model, config.rho_pos, config.rho_neg,
                        seed=config.effective_noise_seed, l_avg=data.manifest["l_avg_train"])
    observed = torch.from_numpy(noise.noisy.astype(np.float32)).to(device)
    clean = torch.from_numpy(clean_train.astype(np.float32)).to(device)
    flip_mask = torch.from_numpy(noise.flip_mask).to(device)
    num_train, num_labels = observed.shape
    # global instance index -> train position (statistics rows) / test position
    position_of = torch.full((data.num_stays,), -1, dtype=torch.long)
    position_of[torch.from_numpy(train_rows)] = torch.arange(num_train)
    test_position_of = torch.full((data.num_stays,), -1, dtype=torch.long)
    test_position_of[torch.from_numpy(test_rows)] = torch.arange(len(test_rows))

    dataset_options = dict(text_key=config.text_feature_key or None,
                           max_series_bins=config.max_series_bins, max_note_tokens=config.max_note_tokens)
    train_set = CohortDataset(data, train_rows, **dataset_options)
    test_set = CohortDataset(data, test_rows, **dataset_options)
    label_embeddings = data.label_embeddings(config.text_feature_key or None)

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = build_backbone(config.backbone, config, num_labels=num_labels,
                           series_channels=int(data.manifest["series"]["channels"]),
                           note_dim=data.note_dim,
                           label_name_embeddings=torch.from_numpy(np.asarray(label_embeddings, dtype=np.float32)))
    model.to(device)
    parameters = list(model.parameters())
    # the fused kernel: one pass over all parameters instead of ~10 ops per tensor (same update)
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay,
                                 fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.cosine_t_max,
                                                           eta_min=config.cosine_eta_min)
    method = build_method(config, observed=observed,
                          gather=distributed.autograd_all_gather if world > 1 else None)
    statistics = PairStatistics(num_train, num_labels, device=device)
    history: list[dict] = []
    start_epoch = 1
    if resume_state is not None:
        model.load_state_dict(resume_state.model)
        optimizer.load_state_dict(resume_state.optimizer)
        scheduler.load_state_dict(resume_state.scheduler)
        method.load_state_dict(resume_state.method)
        statistics.load_state_dict(resume_state.statistics)
        history = list(resume_state.history)
        start_epoch = resume_state.epoch + 1
        logger.info("resuming at epoch %d of %d", start_epoch, config.epochs)

    patients = data.patient_id[train_rows]
    for epoch in range(start_epoch, config.epochs + 1):
        _maybe_fail(loop_config.get("fail_once"), epoch, rank, placement)
        epoch_start = time.perf_counter()
        seed_everything(config.seed, epoch, rank, config.deterministic)
        method.configure_epoch(epoch, optimizer)

        # 1. train -----------------------------------------------------------------------
        model.train()
        batches = epoch_batches(num_train, config.batch_size, config.seed, epoch,
                                sampler=config.sampler, groups=patients, minimum_batch=world)
        local = [shard(b, rank, world) for b in batches]
        loader = DataLoader(train_set, batch_sampler=local, collate_fn=collate, **loader_options(device))
        term_sums: dict[str, float] = {}
        for global_batch, batch in zip(batches, loader):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            positions = position_of[batch["index"].cpu()].to(device)
            output = model(batch)
            terms = method.batch_loss(output, batch, positions, epoch)
            weight = shard_weight(len(positions), len(global_batch), world)
            loss = weight * sum(terms.local.values()) + sum(terms.global_.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(parameters)   # DDP gradient averaging (see its docstring)
            optimizer.step()
            if config.selection_pass == "train":
                statistics.record_batch(positions, torch.sigmoid(output.logits.detach()), observed[positions])
            for name, value in {**terms.local, **terms.global_}.items():
                term_sums[name] = term_sums.get(name, 0.0) + float(value.detach()) * len(positions)
        train_seconds = time.perf_counter() - epoch_start

        # 2.–3. statistics, selection, correction ------------------------------------------
        selection_start = time.perf_counter()
        if config.selection_pass == "eval":      # every rank receives all N rows: nothing to gather
            statistics.record_batch(torch.arange(num_train, device=device),
                                    _predict(model, train_set, position_of, rank, world, device), observed)
        elif world > 1:
            statistics.gather(distributed.all_gather_variable)
        statistics.close_epoch()
        outcome = method.end_epoch(epoch, statistics)
        selection_seconds = time.perf_counter() - selection_start

        # 4. diagnostics against clean labels (outside the method), evaluation -------------
        metrics: dict[str, Any] = {"epoch": epoch, **placement}
        metrics.update(_train_terms(term_sums, num_train, device))
        metrics.update({f"noise/{key}": value for key, value in noise.summary().items()})
        diagnostics = correction_diagnostics(
            corrected=outcome.corrected, observed=observed, clean=clean, flip_mask=flip_mask,
            partition=outcome.partition, predictions=statistics.probabilities)
        metrics.update(diagnostics)
        metrics.update({f"correction/{k}": v for k, v in outcome.diagnostics.items()})
        metrics.update(_mechanism_diagnostics(statistics, outcome, observed, clean, flip_mask))
        metrics["train/same_patient_share"] = same_patient_share(batches, patients)

        eval_start = time.perf_counter()
        probabilities = _predict(model, test_set, test_position_of, rank, world, device)
        test_metrics = classification_metrics(probabilities.cpu().numpy(), data.labels[test_rows])
        metrics.update({f"test/{k}": v for k, v in test_metrics.items()})
        eval_seconds = time.perf_counter() - eval_start
        scheduler.step()

        metrics["artifact/selection_path"] = _write_artifact(loop_config.get("artifact_dir"), epoch,
                                                             outcome.artifact, rank, flip_mask=flip_mask,
                                                             label_names=data.label_names)
        metrics.update({"time/train_s": train_seconds, "time/selection_s": selection_seconds,
                        "time/eval_s": eval_seconds,
                        "time/epoch_s": time.perf_counter() - epoch_start,
                        "time/trial_wall_s": time.perf_counter() - trial_start})
        history.append(metrics)

        # 5. report + checkpoint --------------------------------------------------------
        state = TrainingState(epoch=epoch, model=model.state_dict(), optimizer=optimizer.state_dict(),
                              scheduler=scheduler.state_dict(), method=method.state_dict(),
                              statistics=statistics.state_dict(), history=history)
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                save_training_state(state, folder)
                report(metrics, folder)
        else:
            report(metrics, None)
    return history


def save_training_state(state: TrainingState, folder: str | os.PathLike) -> None:
    """Write a checkpoint folder: ``state.pt`` holds only tensors and primitive containers (so it
    loads with ``torch.load(weights_only=True)``: no pickled code runs on resume), and
    ``history.json`` every epoch's metrics so far, readable without torch (results collection
    reads the trial's rows from it)."""
    payload = {key: value for key, value in state.__dict__.items() if key != "history"}
    torch.save(payload, Path(folder) / CHECKPOINT_FILE)
    (Path(folder) / HISTORY_FILE).write_text(json.dumps(state.history, default=_json_scalar))


def _json_scalar(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(value) == 0:
        return value.item()
    raise TypeError(f"history: metric value {value!r} ({type(value).__name__}) is not a JSON scalar")


def load_training_state(checkpoint_dir: str | os.PathLike) -> TrainingState:
    """Read a folder written by `save_training_state` (``weights_only=True``: a crafted
    ``state.pt`` cannot run code; an unexpected object in it is an error naming the file)."""
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # pickle.UnpicklingError for anything beyond tensors/primitives
        raise ValueError(f"{path}: not a loadable training checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    history = json.loads((Path(checkpoint_dir) / HISTORY_FILE).read_text())
    return TrainingState(**payload, history=history)


def latest_training_state(store: CheckpointStore) -> TrainingState | None:
    """The state of the store's newest complete checkpoint, None when it holds none."""
    latest = store.latest()
    if latest is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return load_training_state(store.download(latest, folder))


def run_with_store(loop_config: dict, store: CheckpointStore,
                   report_metrics: Callable[[dict[str, Any]], None]) -> list[dict]:
    """`run_training` resuming from the store's newest checkpoint; every epoch rank 0 publishes
    its checkpoint to the store *before* the metrics are reported (what was reported is durable)."""
    def report(metrics: dict[str, Any], folder: str | None) -> None:
        if folder:
            store.publish(folder, int(metrics["epoch"]))
        report_metrics(metrics)

    return run_training(loop_config, report, latest_training_state(store))


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train V2 entry point. Checkpoints live in the trial's own store
    (``loop_config["checkpoint_root"]``, `miracl_grid.trainables.checkpoints`), so a restarted worker group
    and a resumed trial both continue from the newest complete one found on storage."""
    import ray.train

    run_with_store(loop_config, CheckpointStore(loop_config["checkpoint_root"]), ray.train.report)


# ----------------------------------------------------------------------------------------
def _placement(device: torch.device) -> dict[str, str]:
    """Where every rank runs, rank order, comma-joined: Ray node id ("" outside Ray) and device."""
    node_id = ""
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    ranks = distributed.all_gather_object((node_id, str(device)))
    return {"placement/node_ids": ",".join(node for node, _ in ranks),
            "placement/devices": ",".join(name for _, name in ranks)}


@torch.inference_mode()
def _predict(model, dataset: CohortDataset, position_of: torch.Tensor, rank: int, world: int,
             device: torch.device) -> torch.Tensor:
    """Eval-mode sigmoid probabilities for a whole split (the test split, or the train split for
    ``selection_pass="eval"``), len(dataset)×L in dataset order: each rank predicts a contiguous
    shard, rows are gathered onto every rank. position_of: global instance index -> row."""
    model.eval()
    positions = shard(np.arange(len(dataset)), rank, world)
    loader = DataLoader(dataset, batch_sampler=np.array_split(positions, max(1, -(-len(positions) // EVAL_BATCH_SIZE))),
                        collate_fn=collate, **loader_options(device))
    indices, outputs = [], []
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        outputs.append(torch.sigmoid(model(batch).logits).float())
        indices.append(position_of[batch["index"].cpu()].to(device))
    local_index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    local_output = torch.cat(outputs) if outputs else torch.zeros(0, 1, device=device)
    full = distributed.gather_rows(local_index, local_output, len(dataset))
    if torch.isnan(full).any():
        raise RuntimeError("evaluation: some instances received no prediction")
    return full


def _mechanism_diagnostics(statistics: PairStatistics, outcome, observed: torch.Tensor, clean: torch.Tensor,
                           flip_mask: torch.Tensor) -> dict[str, float]:
    """`miracl_grid.trainables.diagnostics` over the epoch's statistics and the method's outcome (clean labels
    and flip mask enter here, outside the method)."""
    predictions = statistics.probabilities
    metrics = memorisation_metrics(predictions, observed, flip_mask)
    metrics.update(correction_error_metrics(outcome.corrected, observed, clean, flip_mask, predictions))
    metrics.update(class_selection_metrics(outcome.partition, observed, flip_mask, outcome.negative_candidates))
    signals = {"rank": oriented_rank(predictions, observed),
               "difficulty_durations": statistics.difficulty("durations"),
               "difficulty_events": statistics.difficulty("events"),
               "bce": statistics.bce, "z_tilde": outcome.z_tilde}
    metrics.update(selection_signal_aucs(signals, observed, flip_mask))
    return metrics


def _train_terms(term_sums: dict[str, float], num_train: int, device: torch.device) -> dict[str, float]:
    """Epoch means of the loss terms over the whole train split (rank sums all-reduced)."""
    names = sorted(term_sums)
    totals = torch.tensor([term_sums[n] for n in names], dtype=torch.float64, device=device)
    if distributed.is_distributed():
        torch.distributed.all_reduce(totals)
    metrics = {f"train/loss_{name}": float(total) / num_train for name, total in zip(names, totals)}
    metrics["train/loss"] = sum(metrics.values())
    return metrics


def _write_artifact(artifact_dir: str | None, epoch: int, artifact: dict | None, rank: int, *,
                    flip_mask: torch.Tensor, label_names: tuple[str, ...]) -> str:
    """The method's selection artifact plus the epoch, the label names and each pair's true flip
    (diagnostics: the method never sees them), written by rank 0 through
    `miracl_grid.trainables.selection_artifact`; returns its path, '' if none."""
    if not artifact_dir or artifact is None or rank != 0:
        return ""
    arrays = dict(artifact)
    pairs = arrays.pop("pair_index")
    flipped = flip_mask.reshape(-1)[torch.from_numpy(pairs).to(flip_mask.device)].cpu().numpy()
    path = write_selection_artifact(artifact_path(artifact_dir, epoch), **arrays, epoch=np.array(epoch),
                                    label_names=np.array(label_names), flipped=flipped)
    return str(path)


def _maybe_fail(spec: dict | None, epoch: int, rank: int, placement: dict[str, str]) -> None:
    """Test hook: the worker of `spec['rank']` exits hard at `spec['epoch']` (action "exit", the
    default) or waits there forever (action "hold": a test kills its node), once per marker.
    The marker (JSON) names the rank, epoch and Ray node id of that worker."""
    if not spec or epoch != int(spec["epoch"]) or rank != int(spec.get("rank", 0)):
        return
    marker = Path(spec["marker"])
    if marker.exists():
        return
    action = spec.get("action", "exit")
    marker.parent.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_name(f".{marker.name}.{os.getpid()}")
    temporary.write_text(json.dumps({"rank": rank, "epoch": epoch, "action": action,
                                     "node_id": placement["placement/node_ids"].split(",")[rank]}))
    temporary.rename(marker)                 # a reader never sees a half-written marker
    logger.warning("fail_once hook: rank %d %s at epoch %d", rank, action, epoch)
    if action == "hold":
        while True:
            time.sleep(1)
    os._exit(17)
