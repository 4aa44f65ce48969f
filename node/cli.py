"""The `cephnode` console command.

`python -m cephnode` runs it too. Each area registers its own sub-commands (small modules
with one job each):
  inference.commands   infer, models
  training.commands    train, evaluate, ablation
  node.commands        serve, status, retry, echo, config
  dicom_io.commands    report
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("cephnode.inference.commands", "cephnode.training.commands", "cephnode.node.commands", "cephnode.dicom_io.commands")


def version_text() -> str:
    """The package version and the version of the pack the node would load by default."""
    import json

    import cephnode
    from cephnode.inference.pack import MANIFEST, default_pack_dir

    pack_dir = default_pack_dir()
    try:
        manifest = json.loads((pack_dir / MANIFEST).read_text())
        pack = f"{manifest.get('name', '?')} {manifest.get('version', '?')}"
    except (OSError, ValueError) as exc:
        pack = f"unreadable ({type(exc).__name__})"
    return f"cephnode {cephnode.__version__}\nmodel pack: {pack} ({pack_dir})"


class _VersionAction(argparse.Action):
    """--version, computed only when asked (it reads the pack manifest)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cephnode", description="Automated cephalometric tracing DICOM node")
    parser.add_argument("--version", action=_VersionAction, help="print the package and default model pack versions")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: do not hide it
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cephnode.node import logs

    # Logs go to stderr so a command's own output (tables, JSON) stays clean on stdout;
    # `serve` reconfigures them from its configuration file.
    logs.configure("INFO", "console")
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
