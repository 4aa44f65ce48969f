"""Benchmark of the DICOM node over loopback: a burst of lateral cephs from one modality
association into a real `cephnode serve` process, results delivered to a real Orthanc.

Prints one JSON object:
  receive_rate_per_s        instances / s over the burst (C-STORE request to last response)
  latency_s                 C-STORE answered -> result stored in Orthanc, quiet period excluded:
                            p50/p95/max for the SR and for all objects of the job
  node_peak_rss_mb          the node process's VmHWM at the end
  lost / doubled            instances without a result in Orthanc / SOP UIDs there more than once
Usage: .venv/bin/python bench/bench_node.py [--count 200] [--kinds sr,seg,gsps] [--scale 1.0]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # noqa: E402

from cephnode.dicom_io.uids import derived_uid  # noqa: E402
from tests.support import dicomgen  # noqa: E402
from tests.support.nodeproc import make_node, test_model_pack  # noqa: E402
from tests.support.orthanc import free_port, start_orthanc  # noqa: E402

VARIANTS = ("plain", "monochrome1", "window16", "jpeg2000", "mirrored", "rotated")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--kinds", default="sr,seg,gsps")
    ap.add_argument("--scale", type=float, default=1.0, help="image scale (1.0 = ISBI 968 x 1200)")
    ap.add_argument("--quiet", type=float, default=1.0, help="quiet period of the node, s")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads of the node")
    ap.add_argument("--workers", type=int, default=1, help="processing.workers of the node")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]

    work = Path(tempfile.mkdtemp(prefix="cephnode-bench-"))
    try:
        pack = test_model_pack(Path.home() / ".cache" / "cephnode")
        # a few real ISBI images in several encodings, one study per image as a clinic sends them
        bases = [dicomgen.isbi_image(f"{151 + i:03d}", scale=args.scale) for i in range(5)]
        encoded = []
        for i in range(args.count):
            ds = dicomgen.ceph_variant(bases[i % len(bases)], VARIANTS[i % len(VARIANTS)], study_uid=generate_uid())
            encoded.append(ds)
        with start_orthanc(work / "pacs") as pacs:
            node = make_node(work / "node", port=free_port(), pack=pack, quiet_period_s=args.quiet,
                             allowed_callers=[{"ae_title": "BENCH"}],
                             destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                            "port": pacs.dicom_port, "kinds": kinds}],
                             extra={"processing": {"outbox_kinds": kinds, "workers": args.workers,
                                                   **({"threads": args.threads} if args.threads else {})},
                                    "logging": {"level": "WARNING"}})
            with node:
                node.start(calling_ae="BENCH")
                ae = AE(ae_title="BENCH")
                for ts in {str(ds.file_meta.TransferSyntaxUID) for ds in encoded}:
                    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ts)
                assoc = ae.associate("127.0.0.1", node.port, ae_title="CEPHNODE")
                assert assoc.is_established, "node refused the benchmark association"
                answered: dict[str, float] = {}
                t0 = time.time()
                for ds in encoded:
                    status = assoc.send_c_store(ds)
                    if status and status.Status == 0x0000:
                        answered[str(ds.SOPInstanceUID)] = time.time()
                t_burst = time.time() - t0
                assoc.release()

                n = len(encoded)
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    st = node.status()
                    if st["queue_depth"] == 0 and st["open_studies"] == 0 and sum(st["jobs"].values()) == n:
                        break
                    time.sleep(1.0)
                rss = peak_rss_mb(node.process.pid)
                from cephnode.inference.pack import load_pack

                version = load_pack(pack).version
                with sqlite3.connect(node.db_path) as db:
                    jobs = {r[0]: (r[1], r[2]) for r in db.execute(
                        "SELECT j.sop_uid, j.state, MAX(d.delivered_at) FROM jobs j LEFT JOIN deliveries d"
                        " ON d.job_id = j.id GROUP BY j.id")}
                    sr_at = {r[0]: r[1] for r in db.execute(
                        "SELECT j.sop_uid, d.delivered_at FROM deliveries d JOIN jobs j ON j.id = d.job_id"
                        " WHERE d.kind='sr' AND d.state='done'")}
                    timings = [json.loads(r[0]) for r in db.execute("SELECT timings FROM jobs WHERE timings IS NOT NULL")]
                in_pacs = pacs.instances_by_sop_uid()
                pacs_count = len(pacs.instances())
                node.terminate()

        lat_sr, lat_all, lost = [], [], []
        for ds in encoded:
            uid = str(ds.SOPInstanceUID)
            sent = answered.get(uid)
            if sent is None or uid not in jobs or jobs[uid][0] != "done":
                lost.append(uid)
                continue
            wanted = [str(derived_uid(uid, version, k)) for k in kinds]
            if not all(w in in_pacs for w in wanted):
                lost.append(uid)
                continue
            if uid in sr_at:
                lat_sr.append(sr_at[uid] - sent - args.quiet)
            lat_all.append(jobs[uid][1] - sent - args.quiet)
        step_ms = {k: pct([t[k] for t in timings if k in t], 50) for k in ("decode_ms", "inference_ms", "outputs_ms",
                                                                           "total_ms")}
        report = {
            "instances": n,
            "image": f"{bases[0].shape[1]} x {bases[0].shape[0]}",
            "encodings": list(VARIANTS),
            "kinds": kinds,
            "model_pack": str(pack),
            "cpu_count": os.cpu_count(),
            "quiet_period_s": args.quiet,
        "workers": args.workers,
            "burst_s": round(t_burst, 3),
            "receive_rate_per_s": round(len(answered) / t_burst, 1),
            "latency_s": {
                "sr_stored": {"min": pct(lat_sr, 0), "p50": pct(lat_sr, 50), "p95": pct(lat_sr, 95), "max": pct(lat_sr, 100)},
                "all_objects_stored": {"min": pct(lat_all, 0), "p50": pct(lat_all, 50), "p95": pct(lat_all, 95),
                                       "max": pct(lat_all, 100)},
            },
            "per_job_median_ms": step_ms,
            "node_peak_rss_mb": round(rss, 1) if rss else None,
            "acknowledged": len(answered),
            "lost": len(lost),
            "results_in_orthanc": pacs_count,
            "doubled": max(0, pacs_count - n * len(kinds)),   # objects beyond one per kind and instance
        }
        print(json.dumps(report, indent=2))
        return 0 if not lost else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
