"""Build grid sweep folders without training: registered trials and checkpoints whose
`history.json` holds given per-epoch metrics (the layout of `miracl_grid.grid.folder`, written through it)."""
from __future__ import annotations

import json
from pathlib import Path

from miracl_grid.grid.folder import SweepFolder
from miracl_grid.trainables.config import TrialConfig


def register_trial(folder: SweepFolder, name: str, *, sweep: str = "lambda_cons", provenance=None,
                   **config) -> str:
    flat = TrialConfig.from_dict(config).to_flat_dict()
    return folder.register(name, sweep, flat, provenance or {"provenance/cohort_hash": "c0"})


def history_rows(epochs, map_of=lambda epoch: 0.1 * epoch) -> list[dict]:
    return [{"epoch": epoch, "test/mAP": map_of(epoch), "test/F1": 0.5, "test/F1_class": 0.4,
             "train/loss": 1.0 / epoch, "noise/realised_rho_pos": 0.2, "noise/realised_rho_neg": 0.2,
             "noise/rho_neg_nominal": 0.2, "time/epoch_s": 0.1} for epoch in epochs]


def publish_epochs(folder: SweepFolder, identity: str, epochs, tmp_path: Path, map_of=lambda e: 0.1 * e) -> None:
    """Publish one checkpoint per epoch (history = every epoch so far), as the loop does."""
    store = folder.checkpoint_store(identity)
    for epoch in epochs:
        local = tmp_path / f"local_{identity}_{epoch}"
        local.mkdir(parents=True)
        (local / "state.pt").write_bytes(b"not read by results collection")
        (local / "history.json").write_text(json.dumps(history_rows(range(1, epoch + 1), map_of)))
        store.publish(local, epoch)
