"""miracl-grid: a Ray-distributed experiment grid reproducing MIRACL (docs/METHOD.md).

One import name for the whole project; its subpackages are the repository's top-level folders:
`miracl_grid.data` (cohorts), `miracl_grid.trainables` (models, losses, the training loop),
`miracl_grid.grid` (sweeps on Ray Tune) and `miracl_grid.analysis` (tables, tests, figures).
An installed wheel holds them inside this package; in a checkout (editable install, or no
install at all: `python grid/run.py`, a Ray job shipping the working directory) they are the
folders next to this one, so the checkout root joins this package's search path.
"""
from pathlib import Path as _Path

_package_folder = _Path(__file__).resolve().parent
_checkout = _package_folder.parent
if not (_package_folder / "data").is_dir() and (_checkout / "trainables" / "loop.py").is_file():
    __path__.append(str(_checkout))
