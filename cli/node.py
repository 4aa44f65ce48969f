"""`cephnode serve | status | retry | echo | config`: the node's operator commands."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from cephnode.config.loading import ConfigError, load_config

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "example.toml"


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", default=os.environ.get("CEPHNODE_CONFIG"),
                   help="node configuration (TOML); default: $CEPHNODE_CONFIG, else built-in defaults")


def _config(args):
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the DICOM node (Storage SCP, queue, inference, delivery)")
    _add_config_arg(p)
    p.add_argument("--role", choices=["all", "receiver", "worker"], default="all",
                   help="receiver: Storage SCP and study scheduler; worker: inference and delivery; all: both "
                        "(split roles share a PostgreSQL queue, storage.database)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="queue depth, recent jobs and failures")
    _add_config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--recent", type=int, default=10, help="how many recent jobs to list")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("retry", help="retry a failed job, or every failed job")
    _add_config_arg(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("job", nargs="?", type=int, help="job number (see `cephnode status`)")
    g.add_argument("--failed", action="store_true", help="retry every failed job")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("echo", help="C-ECHO a peer: a destination name, or AE@HOST:PORT")
    _add_config_arg(p)
    p.add_argument("peer", help="destination name from the configuration, or AE@HOST:PORT")
    p.add_argument("--calling-ae", help="calling AE title (default: the node's)")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("config", help="check a configuration file, or print the commented example")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    c = csub.add_parser("check", help="validate FILE (with the CEPHNODE__* environment overrides); prints every "
                                      "problem with its key path")
    c.add_argument("file", nargs="?", default=os.environ.get("CEPHNODE_CONFIG"),
                   help="default: $CEPHNODE_CONFIG, else the built-in defaults (and the environment)")
    c.add_argument("--sources", action="store_true",
                   help="list every key with its value and where it came from (default, file or environment)")
    c.set_defaults(func=cmd_config_check)
    c = csub.add_parser("example", help="print the example configuration with every key commented")
    c.set_defaults(func=cmd_config_example)


# ---- commands -----------------------------------------------------------------------
def cmd_serve(args) -> int:
    from cephnode.node import logs
    from cephnode.node.service import NodeService

    cfg = _config(args)
    logs.configure(cfg.logging.level, cfg.logging.format, cfg.logging.log_phi)
    try:
        NodeService(cfg, role=args.role).serve_forever()
    except (ValueError, OSError) as exc:  # PackError is a ValueError; a busy port an OSError
        logs.get_logger("cephnode").error("start_failed", error=f"{type(exc).__name__}: {exc}")
        print(f"cephnode serve: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_status(args) -> int:
    from cephnode.node.jobstore import open_store

    cfg = _config(args)
    if not cfg.storage.shared and not Path(cfg.storage.db).exists():
        print(f"no queue database at {cfg.storage.db}: the node has not run with this configuration", file=sys.stderr)
        return 1
    summary = open_store(cfg.storage).summary(recent=args.recent)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    inst = summary["instances"]
    print(f"queue ({summary['store']}) depth: {summary['queue_depth']}   open studies: {summary['open_studies']}")
    if summary["processing_by"]:
        print("processing now: " + ", ".join(f"{owner} {n}" for owner, n in summary["processing_by"].items()))
    print(f"instances: {inst['received']} received, {inst['selected']} selected, {inst['skipped']} skipped, "
          f"{inst['duplicates']} duplicate receipts, {inst['pruned']} pruned by retention")
    print("jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(summary["jobs"].items())) or "none"))
    print("deliveries: " + (", ".join(f"{k} {v}" for k, v in sorted(summary["deliveries"].items())) or "none"))
    configured = {d.name: d.address for d in cfg.destinations}   # a DICOMweb URL reads better than AE@host
    for name, d in summary["destinations"].items():
        line = (f"  {name} ({configured.get(name, d['address'])}): {d['done']} done, {d['pending']} pending, "
                f"{d['failed']} failed")
        if d["pending"] and d["next_attempt_at"]:
            line += f"; next attempt {_when(d['next_attempt_at'])} (attempts so far: {d['max_attempts_so_far']})"
        print(line)
        if d["last_error"] and (d["pending"] or d["failed"]):
            print(f"      last error: {d['last_error']}")
    if summary["recent_jobs"]:
        print("\nrecent jobs:")
        for j in summary["recent_jobs"]:
            print(f"  #{j['id']:<6} {j['state']:<10} {_when(j['finished_at'] or j['created_at'])}  {j['sop_uid']}")
            if j["error"] and j["state"] != "failed":  # e.g. one output kind could not be built
                print(f"          note: {j['error']}")
    if summary.get("needs_manual_tracing"):
        print(f"\nNEEDS MANUAL TRACING ({len(summary['needs_manual_tracing'])}; quality control failed, "
              "the tracing was withheld):")
        for j in summary["needs_manual_tracing"]:
            print(f"  #{j['id']:<6} {j['sop_uid']}\n          {j['error']}")
    if summary["failed_jobs"]:
        n_failed = summary["jobs"].get("failed", len(summary["failed_jobs"]))
        shown = "" if n_failed == len(summary["failed_jobs"]) else f", newest {len(summary['failed_jobs'])} shown"
        print(f"\nFAILED jobs ({n_failed}{shown}; `cephnode retry JOB` or `--failed`):")
        for j in summary["failed_jobs"]:
            print(f"  #{j['id']:<6} {j['sop_uid']}\n          {j['error']}")
    return 0


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def cmd_retry(args) -> int:
    from cephnode.node.jobstore import open_store

    cfg = _config(args)
    store = open_store(cfg.storage)
    try:
        ids = store.retry(args.job, all_failed=args.failed)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 1
    print(f"queued again: {', '.join('#' + str(i) for i in ids) if ids else 'nothing (no failed job)'}")
    return 0


_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+|\[[^\]]+\]):(?P<port>\d{1,5})$")


def cmd_echo(args) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from cephnode.node.delivery import client_ssl_context

    cfg = _config(args)
    dest = next((d for d in cfg.destinations if d.name == args.peer), None)
    tls_args = None
    if dest is not None and dest.type == "dicomweb":
        print(f"{dest.name} is a DICOMweb destination ({dest.url}); C-ECHO is for DIMSE peers", file=sys.stderr)
        return 2
    if dest is not None:
        ae_title, host, port = dest.ae_title, dest.host, dest.port
        if dest.tls.enabled:
            tls_args = (client_ssl_context(dest.tls), dest.tls.server_hostname or dest.host)
    else:
        m = _PEER.match(args.peer)
        if m is None:
            print(f"{args.peer!r} is neither a configured destination nor AE@HOST:PORT", file=sys.stderr)
            return 2
        ae_title, host, port = m["ae"], m["host"].strip("[]"), int(m["port"])
    ae = AE(ae_title=args.calling_ae or (dest.calling_ae_title if dest and dest.calling_ae_title else cfg.listen.ae_title))
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 15
    t = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer"
        print(f"echo {ae_title}@{host}:{port}: FAILED ({why})")
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None) if status else None
    ms = (time.perf_counter() - t) * 1000
    if code == 0x0000:
        print(f"echo {ae_title}@{host}:{port}: OK ({ms:.0f} ms)")
        return 0
    print(f"echo {ae_title}@{host}:{port}: FAILED (status {code if code is None else hex(code)})")
    return 1


def cmd_config_check(args) -> int:
    from cephnode.config.loading import load_config_with_sources, value_sources

    try:
        loaded = load_config_with_sources(args.file)
    except ConfigError as exc:
        print(str(exc))
        return 1
    cfg = loaded.config
    print(f"{args.file or '<defaults>'}: OK (AE {cfg.listen.ae_title} on {cfg.listen.bind_address}:{cfg.listen.port}, "
          f"{len(cfg.destinations)} destination(s), quiet period {cfg.study.quiet_period_s:g} s)")
    for warning in config_warnings(cfg):
        print(f"  warning: {warning}")
    if args.sources:
        rows = value_sources(loaded)
        width = max(len(k) for k, _, _ in rows)
        for key, shown, origin in rows:
            print(f"  {key:<{width}}  {shown:<40}  {origin}")
    return 0


def config_warnings(cfg) -> list[str]:
    """Valid but probably not what an admin wants in production."""
    out = []
    if not cfg.listen.allowed_callers:
        out.append("listen.allowed_callers is empty: any calling AE title is accepted")
    if not cfg.destinations and not cfg.return_to_sender.enabled:
        out.append("no destinations: results stay in the outbox only")
    if not cfg.listen.tls.enabled and cfg.listen.bind_address not in ("127.0.0.1", "::1", "localhost"):
        out.append("listen.tls is off on a network address: DICOM travels unencrypted")
    if cfg.logging.log_phi:
        out.append("logging.log_phi is on: patient names and IDs are written to the logs")
    return out


def cmd_config_example(args) -> int:
    sys.stdout.write(EXAMPLE_CONFIG.read_text())
    return 0
