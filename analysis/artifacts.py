"""Read the per-epoch selection artifact a MIRACL trial stores (``artifact/selection_path``).

The trainer writes one ``.npz`` per stored epoch for `artifact_groups` chosen groups
g = (label l, observed class c) of the class-wise GMM partition (METHOD §3–§4, Eq. 2–3).
Layout read here (G groups, P = total pairs over the groups; ragged arrays concatenated in
group order, group g occupying ``[z_offsets[g], z_offsets[g+1])``):

=====================  ==========  ===========================================================
array                  shape       meaning
=====================  ==========  ===========================================================
``label_index``        (G,) int    label l of group g (column of the label matrix)
``observed_class``     (G,) int    observed class c of group g: 1 positive, 0 negative
``z_values``           (P,) float  normalised selection metric Z̃ of each pair (Eq. 2)
``z_offsets``          (G+1,) int  group boundaries; 0 first, non-decreasing, P last
``means``              (G, 2)      GMM component means (any order; the smaller is 'clean')
``variances``          (G, 2)      GMM component variances (> 0)
``weights``            (G, 2)      GMM mixing weights (each row sums to 1)
``partition``          (P,) int8   0 clean, 1 uncertain, 2 noisy (Eq. 3)
=====================  ==========  ===========================================================

Optional: ``label_names`` (L,) str; ``epoch`` () int; ``flipped`` (P,) bool — pair truly
flipped by the noise (diagnostics only); ``loss_values``, ``rank_values``,
``difficulty_values`` (P,) float — the min–max normalised components of Z̃ (Fig. 5 panels).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PARTITION_NAMES: tuple[str, ...] = ("clean", "uncertain", "noisy")
REQUIRED_ARRAYS: tuple[str, ...] = ("label_index", "observed_class", "z_values", "z_offsets", "means",
                                    "variances", "weights", "partition")
COMPONENT_ARRAYS: tuple[str, ...] = ("loss_values", "rank_values", "difficulty_values")


class ArtifactError(ValueError):
    """A selection artifact that does not follow the layout; the message names file and array."""


@dataclass(frozen=True)
class SelectionArtifact:
    """The arrays of one selection ``.npz`` (module doc), validated."""
    path: Path
    label_index: np.ndarray
    observed_class: np.ndarray
    z_values: np.ndarray
    z_offsets: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray
    partition: np.ndarray
    label_names: np.ndarray | None = None
    epoch: int | None = None
    flipped: np.ndarray | None = None
    components: dict[str, np.ndarray] | None = None

    @property
    def num_groups(self) -> int:
        return int(self.label_index.size)

    def group_slice(self, group: int) -> slice:
        return slice(int(self.z_offsets[group]), int(self.z_offsets[group + 1]))

    def group_name(self, group: int) -> str:
        """'Pleurisy; … (positive)' or 'label 17 (negative)'."""
        label = int(self.label_index[group])
        name = (str(self.label_names[label]) if self.label_names is not None and label < len(self.label_names)
                else f"label {label}")
        return f"{name} ({'positive' if int(self.observed_class[group]) == 1 else 'negative'})"

    def find_group(self, label: int | str, observed_class: int = 1) -> int:
        """Index of the group of `label` (index or name) and `observed_class`."""
        if isinstance(label, str):
            if self.label_names is None:
                raise ArtifactError(f"{self.path}: no 'label_names' array to look up '{label}'")
            matches = np.flatnonzero(self.label_names.astype(str) == label)
            if matches.size == 0:
                raise ArtifactError(f"{self.path}: label '{label}' not in 'label_names'")
            label = int(matches[0])
        hits = np.flatnonzero((self.label_index == int(label)) & (self.observed_class == int(observed_class)))
        if hits.size == 0:
            raise ArtifactError(f"{self.path}: no group for label {label}, observed class {observed_class}")
        return int(hits[0])


def load_selection_artifact(path: str | Path) -> SelectionArtifact:
    """Read and validate a selection ``.npz`` (module doc); `ArtifactError` names the bad array."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"selection artifact '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read selection artifact '{path}': {error}") from error
    absent = [name for name in REQUIRED_ARRAYS if name not in arrays]
    if absent:
        raise ArtifactError(f"{path}: missing array(s) {', '.join(absent)} (expected {', '.join(REQUIRED_ARRAYS)})")

    def fail(name: str, expected: str) -> None:
        raise ArtifactError(f"{path}: array '{name}' has shape {arrays[name].shape}: expected {expected}")

    groups = arrays["label_index"].reshape(-1).size
    for name in ("label_index", "observed_class"):
        if arrays[name].ndim != 1 or arrays[name].size != groups:
            fail(name, f"({groups},)")
    offsets = arrays["z_offsets"].astype(np.int64)
    pairs = arrays["z_values"].size
    if arrays["z_values"].ndim != 1:
        fail("z_values", "(P,)")
    if offsets.shape != (groups + 1,):
        fail("z_offsets", f"({groups + 1},) = G+1")
    if offsets[0] != 0 or offsets[-1] != pairs or np.any(np.diff(offsets) < 0):
        raise ArtifactError(f"{path}: array 'z_offsets' must start at 0, be non-decreasing and end at "
                            f"len(z_values) = {pairs} (got first {offsets[0]}, last {offsets[-1]})")
    for name in ("means", "variances", "weights"):
        if arrays[name].shape != (groups, 2):
            fail(name, f"({groups}, 2) = G×2")
    if np.any(arrays["variances"] <= 0):
        raise ArtifactError(f"{path}: array 'variances' must be positive")
    if arrays["partition"].shape != (pairs,):
        fail("partition", f"({pairs},) = len(z_values)")
    if not np.isin(arrays["partition"], (0, 1, 2)).all():
        raise ArtifactError(f"{path}: array 'partition' must hold 0 (clean), 1 (uncertain), 2 (noisy)")
    if not np.isin(arrays["observed_class"], (0, 1)).all():
        raise ArtifactError(f"{path}: array 'observed_class' must hold 0 or 1")
    flipped = arrays.get("flipped")
    if flipped is not None and flipped.shape != (pairs,):
        fail("flipped", f"({pairs},) = len(z_values)")
    components = {}
    for name in COMPONENT_ARRAYS:
        if name in arrays:
            if arrays[name].shape != (pairs,):
                fail(name, f"({pairs},) = len(z_values)")
            components[name] = arrays[name].astype(float)
    epoch = int(arrays["epoch"]) if "epoch" in arrays else None
    return SelectionArtifact(
        path=path, label_index=arrays["label_index"].astype(np.int64),
        observed_class=arrays["observed_class"].astype(np.int64), z_values=arrays["z_values"].astype(float),
        z_offsets=offsets, means=arrays["means"].astype(float), variances=arrays["variances"].astype(float),
        weights=arrays["weights"].astype(float), partition=arrays["partition"].astype(np.int8),
        label_names=arrays.get("label_names"), epoch=epoch,
        flipped=None if flipped is None else flipped.astype(bool), components=components or None)


def write_selection_artifact(path: str | Path, *, label_index: np.ndarray, observed_class: np.ndarray,
                             z_values: list[np.ndarray], means: np.ndarray, variances: np.ndarray,
                             weights: np.ndarray, partition: list[np.ndarray], **optional: np.ndarray) -> Path:
    """Write the layout above from per-group lists (`z_values`, `partition`: one array per
    group); `optional` arrays (label_names, epoch, flipped, *_values) are stored as given,
    ragged lists concatenated. The reference writer for tests and for the trainer."""
    path = Path(path)
    lengths = [len(values) for values in z_values]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays = {"label_index": np.asarray(label_index, dtype=np.int64),
              "observed_class": np.asarray(observed_class, dtype=np.int8),
              "z_values": np.concatenate(z_values).astype(np.float32) if z_values else np.zeros(0, np.float32),
              "z_offsets": offsets, "means": np.asarray(means, dtype=np.float32),
              "variances": np.asarray(variances, dtype=np.float32), "weights": np.asarray(weights, dtype=np.float32),
              "partition": np.concatenate(partition).astype(np.int8) if partition else np.zeros(0, np.int8)}
    for name, value in optional.items():
        arrays[name] = np.concatenate(value) if isinstance(value, list) else np.asarray(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path
