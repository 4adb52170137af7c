"""Installed versions of the packages that shape an output, for its provenance (ARCHITECTURE §5, §8).

`library_versions(packages)` is the one reader of installed distribution versions: the cohort
manifest (`miracl_grid.data.materialise`), the text-feature metadata
(`miracl_grid.data.text_features`) and the sweep provenance (`miracl_grid.grid.provenance`) each
pass the packages that shape what they write.
"""
from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata


def library_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """``{package: installed version, or None when it is not installed}``, in the order given."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
