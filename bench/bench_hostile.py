"""Benchmark of the node under hostile peers, over loopback against a real `cephnode serve`.

Prints one JSON object:
  fuzz                the fuzz suite's inputs (tests/support/fuzz.py) sent as raw bytes:
                      inputs, outcomes (refused / failed / skipped / done), node_crashes,
                      lost (acknowledged, no row), doubled (more than one job per SOP UID)
  bombs               peak RSS of the node and its child processes (the workers and
                      multiprocessing's small resource tracker) after the codec bombs alone
                      (J2K SIZ 60000^2, RLE 12000^2, JPEG-LS SOF 60000^2, deflate 300/600 MB,
                      raw 40000^2, a data set over max_instance_mb), MB (VmHWM)
  stalled             seconds until a real caller (dcmtk echoscu) gets a C-ECHO through while
                      12 partial-PDU sockets and N silent ones are held open by the attacker;
                      the node's limits (pdu_timeout_s, acse_timeout_s) are printed beside it
Usage: .venv/bin/python bench/bench_hostile.py [--skip-fuzz] [--stalled 12] [--silent 0]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support import dicomgen, fuzz  # noqa: E402
from tests.support.hostile import process_figures, send_raw, stall, time_until_served  # noqa: E402
from tests.support.nodeproc import make_node, test_model_pack  # noqa: E402
from tests.support.orthanc import free_port  # noqa: E402


def _node(tmp: Path, limits: dict, listen: dict):
    return make_node(tmp / "node", port=free_port(), pack=test_model_pack(tmp / "pack"), quiet_period_s=0.3,
                     allowed_callers=[{"ae_title": "MODALITY"}],
                     extra={"selection": {"min_rows": 64, "min_columns": 64}, "limits": limits, "listen": listen,
                            "processing": {"outbox_kinds": ["sr"]}})


def _send_all(node, cases, folder: Path) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for c in cases:
        p = folder / f"{c.name}.dcm"
        p.write_bytes(c.data)
        out[c.name] = send_raw(node.port, p, c.sop_class, c.transfer_syntax)
    return out


def _settle(node, timeout=1800):
    return node.wait_for(lambda s: s["queue_depth"] == 0 and s["open_studies"] == 0, timeout=timeout,
                         what="settled")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-fuzz", action="store_true")
    ap.add_argument("--stalled", type=int, default=12)
    ap.add_argument("--silent", type=int, default=0, help="silent TCP sockets held besides the partial PDUs")
    args = ap.parse_args()
    img = dicomgen.isbi_image("160", scale=0.4)
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="cephnode-hostile-") as tmpdir:
        tmp = Path(tmpdir)
        limits = {"max_instance_mb": 16}
        listen = {"max_associations": 10}
        # -- bombs alone: peak RSS
        with _node(tmp / "bombs", limits, listen) as node:
            node.start(calling_ae="MODALITY")
            base = process_figures(node.process.pid)
            bombs = fuzz.generate_bombs(img)
            t = time.perf_counter()
            wire = _send_all(node, bombs, tmp / "bombs-in")
            _settle(node)
            figs = process_figures(node.process.pid)
            report["bombs"] = {"inputs": len(bombs), "seconds": round(time.perf_counter() - t, 1),
                               "node_peak_rss_mb_before": base["node_peak_rss_mb"],
                               "node_peak_rss_mb": figs["node_peak_rss_mb"],
                               "worker_peak_rss_mb": figs["worker_peak_rss_mb"],
                               "statuses": {c.name: wire[c.name].get("status", wire[c.name].get("wire"))
                                            for c in bombs},
                               "node_alive": node.alive()}
            # -- stalled sockets against the same node
            socks = stall(node.port, args.stalled, "partial_pdu") + stall(node.port, args.silent, "silent")
            served = time_until_served(node.port)
            still_open_by_attacker = len(socks)
            for s in socks:
                s.close()
            report["stalled"] = {"partial_pdu_sockets": args.stalled, "silent_sockets": args.silent,
                                 "held_open_by_attacker": still_open_by_attacker,
                                 "seconds_until_real_caller_served": round(served, 2),
                                 "limits": "defaults: request_timeout_s 10, pdu_timeout_s 30, acse_timeout_s 30",
                                 "max_associations": 10}
            node.terminate()
        if not args.skip_fuzz:
            with _node(tmp / "fuzz", {"max_instance_mb": 16}, listen) as node:
                node.start(calling_ae="MODALITY")
                pid = node.process.pid
                cases = fuzz.generate(img)
                t = time.perf_counter()
                wire = _send_all(node, cases, tmp / "fuzz-in")
                _settle(node)
                from cephnode.node.jobstore import JobStore

                store = JobStore(node.db_path)
                inst = {r["sop_uid"] for r in store.instances()}
                per_sop = Counter(j["sop_uid"] for j in store.jobs())
                states = {j["sop_uid"]: j["state"] for j in store.jobs()}
                outcomes = Counter()
                lost = 0
                for c in cases:
                    w = wire[c.name]
                    if "wire" in w or w.get("status") != 0:
                        outcomes["refused"] += 1
                    elif c.sop_uid not in inst:
                        lost += 1
                    else:
                        outcomes[states.get(c.sop_uid, "skipped")] += 1
                figs = process_figures(pid)
                report["fuzz"] = {"inputs": len(cases), "seconds": round(time.perf_counter() - t, 1),
                                  "outcomes": dict(outcomes), "node_crashes": int(not (node.alive() and
                                                                                       node.process.pid == pid)),
                                  "lost": lost, "doubled": sum(1 for v in per_sop.values() if v > 1),
                                  "node_peak_rss_mb": figs["node_peak_rss_mb"],
                                  "worker_peak_rss_mb": figs["worker_peak_rss_mb"]}
                node.terminate()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
