"""Model packs shipped with cephnode (package data: `default/` is the embedded default pack).

Found through importlib.resources, so an installed wheel carries its own model and a checkout
uses the files in place.
"""
from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path


def models_root() -> Path:
    """The folder that holds the shipped packs (a real directory: wheels install unzipped)."""
    with as_file(files(__name__)) as path:
        return Path(path)


def default_pack_dir() -> Path:
    return models_root() / "default"
