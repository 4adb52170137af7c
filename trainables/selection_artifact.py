"""The per-epoch selection artifact of a MIRACL trial (``artifact/selection_path``): its names,
its writer and its reader (ARCHITECTURE §10). numpy only, no torch: the report reads it.

`miracl_grid.trainables.loop` writes one ``.npz`` per selection epoch (rank 0) through
`write_selection_artifact`, for the groups g = (label l, observed class c) of the
`artifact_groups` rarest labels of the class-wise GMM partition (METHOD §3–§4, Eq. 2–3);
`miracl_grid.analysis.report` reads it back with `load_selection_artifact` to draw Fig. 5/7.
Layout (G groups, P = total pairs over the groups; ragged arrays concatenated in group order,
group g occupying ``[z_offsets[g], z_offsets[g+1])``):

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

Optional (the trainer writes all of them): ``label_names`` (L,) str; ``num_labels`` () int;
``epoch`` () int; ``flipped`` (P,) bool — pair truly flipped by the noise (diagnostics only,
added by the loop, never seen by the method); ``loss_values``, ``rank_values``,
``difficulty_values`` (P,) float — the group-wise min–max normalised components Z̃ is built
from (Fig. 5 panels; `miracl_grid.trainables.selection.selection_components`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PARTITION_NAMES: tuple[str, ...] = ("clean", "uncertain", "noisy")
FILE_PATTERN = "selection_epoch{epoch:03d}.npz"
REQUIRED_ARRAYS: tuple[str, ...] = ("label_index", "observed_class", "z_values", "z_offsets", "means",
                                    "variances", "weights", "partition")
COMPONENT_ARRAYS: tuple[str, ...] = ("loss_values", "rank_values", "difficulty_values")
OPTIONAL_ARRAYS: tuple[str, ...] = ("label_names", "num_labels", "epoch", "flipped", *COMPONENT_ARRAYS)


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


def artifact_path(folder: str | Path, epoch: int) -> Path:
    """``folder/selection_epoch007.npz``: where the artifact of `epoch` is written."""
    return Path(folder) / FILE_PATTERN.format(epoch=epoch)


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
    return _validated(path, arrays)


def _validated(path: Path, arrays: dict[str, np.ndarray]) -> SelectionArtifact:
    """The checks of the layout (module doc), shared by the reader and the writer."""
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
                             z_values: np.ndarray, z_offsets: np.ndarray, means: np.ndarray,
                             variances: np.ndarray, weights: np.ndarray, partition: np.ndarray,
                             **optional: np.ndarray) -> Path:
    """Write the layout above (concatenated groups, `z_offsets` G+1) to `path`, after the
    reader's checks (a bad array is an `ArtifactError` here, not in the report); `optional`
    arrays (label_names, num_labels, epoch, flipped, *_values) are stored as given. Returns `path`."""
    path = Path(path)
    unknown = sorted(set(optional) - set(OPTIONAL_ARRAYS))
    if unknown:
        raise ArtifactError(f"{path}: unknown optional array(s) {', '.join(unknown)} "
                            f"(expected some of {', '.join(OPTIONAL_ARRAYS)})")
    arrays = {"label_index": np.asarray(label_index, dtype=np.int64),
              "observed_class": np.asarray(observed_class, dtype=np.int64),
              "z_values": np.asarray(z_values), "z_offsets": np.asarray(z_offsets, dtype=np.int64),
              "means": np.asarray(means), "variances": np.asarray(variances), "weights": np.asarray(weights),
              "partition": np.asarray(partition, dtype=np.int8),
              **{name: np.asarray(value) for name, value in optional.items()}}
    _validated(path, arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path
