"""Benchmark of the DICOM node over loopback: a burst of lateral cephs from one modality
association into a real `cephnode serve` process, results delivered to a real Orthanc.

Prints one JSON object:
  receive_rate_per_s        instances / s over the burst (C-STORE request to last response)
  latency_s                 C-STORE answered -> result stored in Orthanc, quiet period excluded:
                            p50/p95/max for the SR and for all objects of the job
  drain_rate_per_s          instances / s from the first C-STORE to the last job finished, quiet
                            period excluded: the sustained throughput of the whole layout
  node_peak_rss_mb          each node process's VmHWM at the end (its worker processes apart)
  cpu_s_per_image           CPU seconds (utime + stime from /proc) per image over the burst and its
                            processing, for the node processes, their worker processes, Orthanc
                            and this bench (the sending modality, and its reading of the queue);
                            and per job the median CPU ms of each stage inside the worker (time.process_time: decode, inference,
                            objects), which contention distorts less than wall time
  lost / doubled            instances without a result in Orthanc / SOP UIDs there more than once
Layouts: `--store sqlite` (default) is the single `cephnode serve` process; `--store postgresql`
starts a throwaway PostgreSQL cluster (fsync on) and runs one `--role receiver` process plus
`--worker-processes N` `--role worker` processes on a shared spool/outbox.
Usage: .venv/bin/python bench/bench_node.py [--count 200] [--kinds sr,seg,gsps] [--scale 1.0]
       .venv/bin/python bench/bench_node.py --count 8 --gap 4 --quiet 1   # one image at a time: latency
       .venv/bin/python bench/bench_node.py --store postgresql --worker-processes 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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
from cephnode.node.jobstore import JobStore  # noqa: E402
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


def cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--kinds", default="sr,seg,gsps")
    ap.add_argument("--scale", type=float, default=1.0, help="image scale (1.0 = ISBI 968 x 1200)")
    ap.add_argument("--quiet", type=float, default=1.0, help="quiet period of the node, s")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads of the node")
    ap.add_argument("--workers", type=int, default=1, help="processing.workers of each processing node")
    ap.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite",
                    help="sqlite: one `serve` process; postgresql: a receiver process plus worker processes")
    ap.add_argument("--worker-processes", type=int, default=1, help="`--role worker` processes (postgresql)")
    ap.add_argument("--batch", choices=["auto", "on", "off"], default="auto", help="processing.batch of the node")
    ap.add_argument("--batch-size", type=int, default=4, help="processing.batch_size of the node")
    ap.add_argument("--max-associations", type=int, default=2,
                    help="destinations[].max_associations of the node (C-STOREs to Orthanc at once)")
    ap.add_argument("--gap", type=float, default=0.0,
                    help="seconds between C-STOREs (e.g. 4: each image meets an idle node, for its latency)")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]

    work = Path(tempfile.mkdtemp(prefix="cephnode-bench-"))
    load_start = os.getloadavg()[0]
    cluster = None
    try:
        pack = test_model_pack(Path.home() / ".cache" / "cephnode")
        # a few real ISBI images in several encodings, one study per image as a clinic sends them
        bases = [dicomgen.isbi_image(f"{151 + i:03d}", scale=args.scale) for i in range(5)]
        encoded = []
        for i in range(args.count):
            ds = dicomgen.ceph_variant(bases[i % len(bases)], VARIANTS[i % len(VARIANTS)], study_uid=generate_uid())
            encoded.append(ds)
        storage: dict = {}
        if args.store == "postgresql":
            from tests.support.postgres import start_cluster

            cluster = start_cluster(durable=True)
            storage = {"database": cluster.new_database(), "spool_dir": str(work / "shared" / "spool"),
                       "outbox_dir": str(work / "shared" / "outbox")}
        with start_orthanc(work / "pacs") as pacs:
            def make(name: str, role: str):
                n = make_node(work / name, port=free_port(), pack=pack, quiet_period_s=args.quiet,
                              allowed_callers=[{"ae_title": "BENCH"}],
                              destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                             "port": pacs.dicom_port, "kinds": kinds,
                                             "max_associations": args.max_associations}],
                              extra={"processing": {"outbox_kinds": kinds, "workers": args.workers,
                                                    "batch": args.batch, "batch_size": args.batch_size,
                                                    **({"threads": args.threads} if args.threads else {})},
                                     "storage": storage,
                                     # a worker has no DICOM port: its `node_started` line says it is ready
                                     "logging": {"level": "INFO" if role == "worker" else "WARNING"}})
                n.role = role
                return n

            if args.store == "sqlite":
                node = make("node", "all")
                processes = [node]
            else:
                node = make("receiver", "receiver")
                processes = [node] + [make(f"worker-{i + 1}", "worker") for i in range(args.worker_processes)]
            try:
                for p in processes[1:]:
                    p.start(wait=False)
                node.start(calling_ae="BENCH")
                for p in processes[1:]:
                    p.wait_for_event("node_started", after_start=1)
                def cpu_now() -> dict[str, float]:
                    nodes = [p.process.pid for p in processes]
                    workers = [c for pid in nodes for c in children(pid)]
                    return {"node_processes": sum(map(cpu_s, nodes)), "worker_processes": sum(map(cpu_s, workers)),
                            "orthanc": cpu_s(pacs.process.pid), "bench_sender": time.process_time()}

                cpu_start = cpu_now()
                ae = AE(ae_title="BENCH")
                for ts in {str(ds.file_meta.TransferSyntaxUID) for ds in encoded}:
                    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ts)
                assoc = ae.associate("127.0.0.1", node.port, ae_title="CEPHNODE")
                assert assoc.is_established, "node refused the benchmark association"
                answered: dict[str, float] = {}
                t0 = time.time()
                for i, ds in enumerate(encoded):
                    if args.gap and i:
                        time.sleep(args.gap)
                    status = assoc.send_c_store(ds)
                    if status and status.Status == 0x0000:
                        answered[str(ds.SOPInstanceUID)] = time.time()
                t_burst = time.time() - t0
                assoc.release()

                n = len(encoded)
                deadline = time.monotonic() + args.timeout
                # The queue is read here, in this process (its CPU is the bench's own): `cephnode
                # status` as a subprocess each second cost a Python start-up per poll, a third of
                # a core taken from the node on this 2-core machine.
                queue = JobStore(node.queue())
                while time.monotonic() < deadline:
                    st = queue.summary(recent=0)
                    if st["queue_depth"] == 0 and st["open_studies"] == 0 and sum(st["jobs"].values()) == n:
                        break
                    time.sleep(1.0)
                queue.close()
                cpu_end = cpu_now()
                rss = {p.log_path.parent.name: peak_rss_mb(p.process.pid) for p in processes}
                for p in processes:
                    for i, c in enumerate(children(p.process.pid)):
                        rss[f"{p.log_path.parent.name}/child-{i + 1}"] = peak_rss_mb(c)
                from cephnode.inference.pack import load_pack

                version = load_pack(pack).version
                store = JobStore(node.queue())
                job_rows, delivery_rows = store.jobs(), store.deliveries()
                store.close()
                by_id = {j["id"]: j for j in job_rows}
                last_delivery: dict[int, float] = {}
                sr_at: dict[str, float] = {}
                for d in delivery_rows:
                    if d["state"] == "done":
                        last_delivery[d["job_id"]] = max(last_delivery.get(d["job_id"], 0.0), d["delivered_at"])
                        if d["kind"] == "sr":
                            sr_at[by_id[d["job_id"]]["sop_uid"]] = d["delivered_at"]
                jobs = {j["sop_uid"]: (j["state"], last_delivery.get(j["id"])) for j in job_rows}
                timings = [json.loads(j["timings"]) for j in job_rows if j["timings"]]
                finished = [j["finished_at"] for j in job_rows if j["finished_at"]]
                in_pacs = pacs.instances_by_sop_uid()
                pacs_count = len(pacs.instances())
            finally:
                for p in processes:
                    p.terminate()
                    p.__exit__()

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
        step_ms = {k: pct([t[k] for t in timings if k in t], 50)
                   for k in ("read_ms", "decode_ms", "inference_ms", "sr_written_ms", "outputs_ms", "total_ms",
                             "decode_cpu_ms", "inference_cpu_ms", "outputs_cpu_ms")}
        cpu_per_image = {k: round((cpu_end[k] - cpu_start[k]) / n, 3) for k in cpu_start}
        cpu_per_image["total"] = round(sum(cpu_per_image.values()), 3)
        report = {
            "instances": n,
            "image": f"{bases[0].shape[1]} x {bases[0].shape[0]}",
            "encodings": list(VARIANTS),
            "kinds": kinds,
            "model_pack": str(pack),
            "cpu_count": os.cpu_count(),
            "load_average_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # others' work too
            "quiet_period_s": args.quiet,
            "store": args.store,
            "layout": ("one `serve --role all` process" if args.store == "sqlite" else
                       f"1 receiver + {args.worker_processes} worker process(es)"),
            "workers_per_process": args.workers,
            "burst_s": round(t_burst, 3),
            "receive_rate_per_s": round(len(answered) / t_burst, 1),
            "drain_rate_per_s": (round(n / (max(finished) - t0 - args.quiet), 3) if finished else None),
            "latency_s": {
                "sr_stored": {"min": pct(lat_sr, 0), "p50": pct(lat_sr, 50), "p95": pct(lat_sr, 95), "max": pct(lat_sr, 100)},
                "all_objects_stored": {"min": pct(lat_all, 0), "p50": pct(lat_all, 50), "p95": pct(lat_all, 95),
                                       "max": pct(lat_all, 100)},
            },
            "per_job_median_ms": step_ms,
            "cpu_s_per_image": cpu_per_image,
            "batch": args.batch,
            "max_associations": args.max_associations,
            "batched_jobs": sum(1 for t in timings if t.get("batch_size", 1) > 1),
            "node_peak_rss_mb": {k: (round(v, 1) if v else None) for k, v in rss.items()},
            "acknowledged": len(answered),
            "lost": len(lost),
            "results_in_orthanc": pacs_count,
            "doubled": max(0, pacs_count - n * len(kinds)),   # objects beyond one per kind and instance
        }
        print(json.dumps(report, indent=2))
        return 0 if not lost else 1
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
