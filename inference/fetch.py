"""Fetch the published CephTrace v4 weights from their model hub with huggingface_hub.

The hub's listing gives each file's size (and, for LFS files, its sha256); every download is
checked against it, the seven files are placed under their contract paths, and a pack.json
records what was fetched so later loads verify the files. The weights are CC BY-NC-SA 4.0:
non-commercial use only.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from cephnode.inference import contract
from cephnode.inference.landmarks import CANONICAL_25
from cephnode.inference.pack import PUBLISHED_NAME, sha256_file, write_manifest

DEFAULT_REPO_ID = os.environ.get("CEPHNODE_HUB_REPO", "CephTrace/cephtrace-v4")
DEFAULT_REVISION = os.environ.get("CEPHNODE_HUB_REVISION", "main")
PUBLISHED_TOTAL_MB = (264, 277)      # the model card's figure for all seven files
LICENSE = "CC BY-NC-SA 4.0 (non-commercial use only)"


class FetchError(RuntimeError):
    pass


def _locate(listing: dict[str, object], spec: contract.ModelSpec) -> str:
    """The repository path of a contract file: the exact contract path, else a unique file
    with the same name anywhere in the repository (hubs are sometimes laid out differently)."""
    if spec.path in listing:
        return spec.path
    base = PurePosixPath(spec.path).name
    hits = [p for p in listing if PurePosixPath(p).name == base]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise FetchError(f"{spec.path}: not in the repository")
    raise FetchError(f"{spec.path}: ambiguous, several files are called {base}: {hits}")


def fetch_published(dest: Path | str, *, repo_id: str = DEFAULT_REPO_ID, revision: str = DEFAULT_REVISION,
                    endpoint: str | None = None, token: str | None = None, progress=print) -> Path:
    """Download the seven files into ``dest`` and write its pack.json. Returns ``dest``."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile

    dest = Path(dest)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    try:
        entries = [e for e in api.list_repo_tree(repo_id, revision=revision, recursive=True) if isinstance(e, RepoFile)]
    except Exception as exc:
        raise FetchError(f"cannot list {repo_id}@{revision} on {endpoint or 'the Hugging Face hub'}: {exc}") from exc
    listing = {e.path: e for e in entries}
    plan = [(spec, _locate(listing, spec)) for spec in contract.MODELS]

    staging = dest / ".download"
    staging.mkdir(parents=True, exist_ok=True)
    commit = None
    total = 0
    for spec, remote in plan:
        entry = listing[remote]
        progress(f"fetching {remote} ({entry.size / 1e6:.1f} MB)")
        try:
            local = Path(hf_hub_download(repo_id, remote, revision=revision, endpoint=endpoint, token=token,
                                         local_dir=staging))
        except Exception as exc:
            raise FetchError(f"{remote}: download failed: {exc}") from exc
        size = local.stat().st_size
        if size != entry.size:
            raise FetchError(f"{remote}: got {size} bytes, the hub lists {entry.size}")
        lfs_sha = getattr(entry.lfs, "sha256", None) if entry.lfs is not None else None
        if lfs_sha and sha256_file(local) != lfs_sha:
            raise FetchError(f"{remote}: sha256 does not match the hub's LFS record")
        target = dest / spec.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)
        total += size
    shutil.rmtree(staging, ignore_errors=True)
    try:
        commit = api.model_info(repo_id, revision=revision).sha
    except Exception:
        commit = None          # the listing and files were verified; the commit is informative only
    in_range = PUBLISHED_TOTAL_MB[0] <= total / 1e6 <= PUBLISHED_TOTAL_MB[1]
    write_manifest(
        dest, name=PUBLISHED_NAME, version=f"v4@{(commit or revision)[:12]}", predicted=CANONICAL_25, rules={},
        provenance={"source": "huggingface_hub", "endpoint": endpoint or "https://huggingface.co", "repo_id": repo_id,
                    "revision": revision, "commit": commit, "license": LICENSE,
                    "files": {spec.path: remote for spec, remote in plan},
                    "total_bytes": total, "matches_published_total_size": in_range},
        accuracy={"published": {"test_set": "151 mixed images (authors)", "mre_mm": 1.050, "sdr_2mm_pct": 87.8,
                                "note": "authors' figures with S-N = 71 mm calibration; not measured here"}},
    )
    if not in_range:
        progress(f"note: {total / 1e6:.1f} MB in all; the model card states {PUBLISHED_TOTAL_MB[0]}-"
                 f"{PUBLISHED_TOTAL_MB[1]} MB, so these may not be the published weights")
    return dest

