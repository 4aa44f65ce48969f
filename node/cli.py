"""The `cephnode` console command.

Each area registers its own sub-commands (small modules with one job each):
  inference.commands   infer, models
  training.commands    train, evaluate, ablation
  node.commands        serve, status, retry, echo, config
  dicom_io.commands    report
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("inference.commands", "training.commands", "node.commands", "dicom_io.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cephnode", description="Automated cephalometric tracing DICOM node")
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
    from node import logs

    # Logs go to stderr so a command's own output (tables, JSON) stays clean on stdout;
    # `serve` reconfigures them from its configuration file.
    logs.configure("INFO", "console")
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
