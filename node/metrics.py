"""The node's Prometheus metrics (the official prometheus_client, on a registry of our own).

Two kinds of source, so the figures are right whether jobs run in threads or in child
processes:
  events   counters and histograms updated in the parent process where the event happens or
           its result comes back: the receiver (instances), the worker loop after a job
           returns (outcome; phase timings read back from the queue database, where the job
           wrote them), the delivery loop (deliveries)
  state    gauges read at scrape time from the queue database and the file system (queue
           depth and age, pending and parked deliveries, spool/outbox bytes, free disk)
Counters start at zero with each process, as Prometheus expects; the database-derived gauges
are the same after a restart.

Naming follows Prometheus conventions: `cephnode_` prefix, `_total` counters, `_seconds` and
`_bytes` in base units, `_info` metrics carrying text as labels.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from cephnode.domain.states import JobState
from cephnode.node.jobstore import JobStore

# Job phase timings as the processor records them (milliseconds) -> phase label.
PHASES = {"read_ms": "read", "decode_ms": "decode", "inference_ms": "inference", "outputs_ms": "outputs"}
PHASE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TERMINAL_JOB_STATES = ("done", "failed")


def tree_bytes(root: Path) -> int:
    """Total size of the regular files under root (0 when it does not exist)."""
    total = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue   # deleted by retention while we looked
        except OSError:
            continue
    return total


class DiskWatermark:
    """Free space on the spool's file system against storage.min_free_mb."""

    def __init__(self, path: str | Path, min_free_mb: float):
        self.path = Path(path)
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)

    def free_bytes(self) -> int:
        target = self.path
        while not target.exists() and target != target.parent:
            target = target.parent
        return shutil.disk_usage(target).free

    def low(self) -> bool:
        return self.min_free_bytes > 0 and self.free_bytes() < self.min_free_bytes


class NodeMetrics:
    def __init__(self, store: JobStore, *, spool_dir: Path, outbox_dir: Path, watermark: DiskWatermark,
                 info: Callable[[], dict[str, str]] | None = None,
                 ready: Callable[[], dict[str, Any]] | None = None):
        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances_received = Counter(
            "cephnode_instances_received", "New instances stored in the spool (duplicates excluded)", registry=r)
        self.instances_duplicate = Counter(
            "cephnode_instances_duplicate", "C-STOREs of an SOP Instance UID already received (not processed again)",
            registry=r)
        self.instances_skipped = Counter(
            "cephnode_instances_skipped", "Instances kept but not traced (selection rules)", registry=r)
        self.instances_unusable = Counter(
            "cephnode_instances_unusable", "Instances kept but unusable (unparseable, undecodable syntax)", registry=r)
        self.stores_refused = Counter(
            "cephnode_stores_refused", "C-STOREs answered with an error status, by reason", ["reason"], registry=r)
        self.jobs = Counter("cephnode_jobs", "Jobs that reached a final state, by outcome", ["outcome"], registry=r)
        self.job_phase = Histogram("cephnode_job_phase_seconds", "Duration of each phase of a job", ["phase"],
                                   buckets=PHASE_BUCKETS, registry=r)
        self.deliveries = Counter(
            "cephnode_deliveries", "Delivery attempts by destination and outcome (delivered, retry, parked)",
            ["destination", "outcome"], registry=r)
        for outcome in TERMINAL_JOB_STATES:      # present from the start, so rates work at once
            self.jobs.labels(outcome)
        for reason in ("disk_low", "error"):
            self.stores_refused.labels(reason)
        r.register(_StateCollector(store, spool_dir, outbox_dir, watermark, info or dict, ready))

    # ---- events (called in the parent process) ----------------------------------------
    def instance(self, outcome: str) -> None:
        """outcome: received, duplicate, skipped, unusable (skipped/unusable are also received)."""
        if outcome == "duplicate":
            self.instances_duplicate.inc()
            return
        self.instances_received.inc()
        if outcome == "skipped":
            self.instances_skipped.inc()
        elif outcome == "unusable":
            self.instances_unusable.inc()
            self.jobs.labels("failed").inc()     # its job is created failed, with the reason

    def store_refused(self, reason: str) -> None:
        self.stores_refused.labels(reason).inc()

    def job_returned(self, job_id: int, state: str) -> None:
        """A worker finished processing a job (in this process or a child): its phase timings
        are in the database; count the outcome when the job is final."""
        row = self.store.job(job_id) or {}
        try:
            timings = json.loads(row.get("timings") or "{}")
        except ValueError:
            timings = {}
        for key, phase in PHASES.items():
            if isinstance(timings.get(key), (int, float)):
                self.job_phase.labels(phase).observe(timings[key] / 1000.0)
        if state != JobState.DELIVERING:               # delivering: its outcome comes from the deliveries
            self.jobs.labels(state).inc()

    def delivery(self, destination: str, outcome: str, *, seconds: float | None = None,
                 job_state: str | None = None) -> None:
        self.deliveries.labels(destination, outcome).inc()
        if seconds is not None:
            self.job_phase.labels("delivery").observe(seconds)
        if job_state is not None and job_state != JobState.DELIVERING:
            self.jobs.labels(job_state).inc()


class _StateCollector(Collector):
    """Gauges computed at scrape time from the queue database and the disk."""

    def __init__(self, store: JobStore, spool: Path, outbox: Path, watermark: DiskWatermark,
                 info: Callable[[], dict[str, str]], ready: Callable[[], dict[str, Any]] | None):
        self.store, self.spool, self.outbox, self.watermark = store, Path(spool), Path(outbox), watermark
        self.info, self.ready = info, ready

    def describe(self) -> Iterable:
        return []   # collected lazily: the database is only read at scrape time

    def collect(self) -> Iterable:
        s = self.store.state_gauges()
        yield GaugeMetricFamily("cephnode_queue_depth", "Jobs queued or being processed or delivered",
                                value=s["queue_depth"])
        oldest = s["oldest_unfinished_created_at"]
        yield GaugeMetricFamily("cephnode_queue_oldest_pending_age_seconds",
                                "Age of the oldest unfinished job (0 when none)",
                                value=max(0.0, time.time() - oldest) if oldest else 0.0)
        yield GaugeMetricFamily("cephnode_open_studies", "Studies waiting for their quiet period",
                                value=s["open_studies"])
        jobs = GaugeMetricFamily("cephnode_jobs_in_state", "Jobs in the queue database by state", labels=["state"])
        for state, n in sorted(s["jobs"].items()):
            jobs.add_metric([state], n)
        yield jobs
        pending = GaugeMetricFamily("cephnode_deliveries_pending", "Deliveries waiting to be (re)tried",
                                    labels=["destination"])
        parked = GaugeMetricFamily("cephnode_deliveries_parked", "Deliveries parked as failed after the last retry",
                                   labels=["destination"])
        for dest, d in sorted(s["destinations"].items()):
            pending.add_metric([dest], d["pending"])
            parked.add_metric([dest], d["failed"])
        yield pending
        yield parked
        yield GaugeMetricFamily("cephnode_spool_bytes", "Bytes of received instances in the spool",
                                value=tree_bytes(self.spool))
        yield GaugeMetricFamily("cephnode_outbox_bytes", "Bytes of produced objects in the outbox",
                                value=tree_bytes(self.outbox))
        free = self.watermark.free_bytes()
        yield GaugeMetricFamily("cephnode_disk_free_bytes", "Free bytes on the spool's file system", value=free)
        yield GaugeMetricFamily("cephnode_disk_watermark_bytes",
                                "Below this much free space C-STOREs are refused (0: no check)",
                                value=self.watermark.min_free_bytes)
        yield GaugeMetricFamily("cephnode_disk_low", "1 while free space is below the watermark",
                                value=1.0 if self.watermark.low() else 0.0)
        info = self.info()
        if info:
            pack = InfoMetricFamily("cephnode_pack", "The model pack in use")
            pack.add_metric([], {"name": info.get("pack_name", ""), "version": info.get("pack_version", "")})
            yield pack
            dev = InfoMetricFamily("cephnode_inference_device", "Where inference runs")
            dev.add_metric([], {"device": info.get("device", ""), "provider": info.get("provider", "")})
            yield dev
        if self.ready is not None:
            yield GaugeMetricFamily("cephnode_ready", "1 when /readyz passes", value=1.0 if self.ready()["ready"] else 0.0)
