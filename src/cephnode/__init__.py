"""cephnode: a DICOM node that traces lateral cephalograms.

The repository keeps the customer's top-level folders (node/, dicom_io/, inference/, config/,
models/ ...); pyproject.toml maps each of them under this one package, so an installed wheel
has `cephnode.node`, `cephnode.inference` and so on, and nothing generic like `config` lands in
site-packages. This folder holds only the package root.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cephnode")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
