"""The licences of everything `pip install cephnode` brings in (the runtime dependency closure,
no extras) are read from the installed distributions' metadata and listed; a copyleft licence
or one that cannot be read fails the run. A proprietary product cannot ship GPL code
(pylibjpeg-libjpeg was GPL-3.0 and is why this exists)."""
from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Strong and library copyleft: shipping it binds the product. MPL-2.0 (file-level, e.g.
# certifi's CA bundle) is allowed when unmodified and so is not in this list.
COPYLEFT = re.compile(r"\b(A?GPL|L?GPL|LGPL|GNU (Affero |Lesser |Library )?General Public|SSPL|EUPL|OSL|"
                      r"CC[- ]BY[- ](NC[- ])?SA|Sleepycat|CPAL|RPL)", re.IGNORECASE)
PERMISSIVE_HINT = re.compile(r"\b(MIT|BSD|Apache|ISC|PSF|Python Software Foundation|Zlib|0BSD|CC0|Unlicense|"
                             r"HPND|MIT-CMU|MPL-2\.0|Mozilla Public License 2\.0)", re.IGNORECASE)


def runtime_closure(root: str = "cephnode") -> dict[str, object]:
    """Every distribution the root needs at run time, following requirements without extras
    (and the extras a requirement itself names, as pip would)."""
    found: dict[str, object] = {}

    def walk(name: str, extras: frozenset[str]) -> None:
        key = canonicalize_name(name)
        if key in found:
            return
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            found[key] = None
            return
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            walk(req.name, frozenset(req.extras))

    walk(root, frozenset())
    return found


def licence_of(dist) -> str:
    meta = dist.metadata
    parts = [meta.get("License-Expression") or "", (meta.get("License") or "").splitlines()[0] if meta.get("License") else ""]
    parts += [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return " | ".join(p for p in parts if p and p.upper() != "UNKNOWN")


def test_runtime_dependencies_are_permissively_licensed():
    closure = runtime_closure()
    missing = sorted(k for k, d in closure.items() if d is None)
    assert not missing, f"runtime dependencies not installed, licence unknown: {missing}"
    table = {k: licence_of(d) for k, d in closure.items() if k != "cephnode"}
    print("\nruntime dependency licences:")
    for k, lic in sorted(table.items()):
        print(f"  {k:<28} {lic}")
    copyleft = {k: lic for k, lic in table.items() if COPYLEFT.search(lic)}
    unknown = {k: lic for k, lic in table.items() if not lic or not PERMISSIVE_HINT.search(lic)}
    assert not copyleft, f"copyleft licences in runtime dependencies: {copyleft}"
    assert not unknown, f"runtime dependencies whose licence cannot be read: {unknown}"
    # the decoders we chose are really what pip installs, and the GPL one is not
    for name in ("python-gdcm", "pyjpegls", "pylibjpeg-openjpeg", "pillow"):
        assert canonicalize_name(name) in table, name
    assert "pylibjpeg-libjpeg" not in table
    assert "huggingface-hub" not in table      # an extra (cephnode[hub]), not a runtime need


def test_the_gpl_decoder_is_not_installed():
    """pydicom loads any pylibjpeg plugin it finds; one left in the environment would decode
    behind our back (./dev removes it from an older .venv)."""
    assert find_spec("libjpeg") is None


def test_the_checker_sees_copyleft():
    assert COPYLEFT.search("GNU General Public License v3 (GPLv3)")
    assert COPYLEFT.search("GPL-3.0-or-later")
    assert COPYLEFT.search("LGPL-2.1-only")
    assert COPYLEFT.search("AGPL-3.0")
    assert COPYLEFT.search("CC BY-NC-SA 4.0")
    assert not COPYLEFT.search("MIT | BSD-3-Clause | Apache-2.0 | MPL-2.0 | MIT-CMU")


def test_models_fetch_names_the_extra_when_huggingface_hub_is_missing(tmp_path):
    """In a child process (the CLI configures logging for its process), with huggingface_hub
    made unimportable as if the extra were not installed."""
    import subprocess
    import sys

    from tests.support.nodeproc import REPO_ROOT

    code = ("import sys; sys.modules['huggingface_hub'] = None; from cephnode.cli.main import main; "
            f"sys.exit(main(['models', 'fetch', '--dest', {str(tmp_path / 'pack')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "huggingface_hub is not installed" in res.stderr and "cephnode[hub]" in res.stderr, res.stderr
