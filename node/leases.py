"""Keeps one process's claims alive, and takes back the claims of processes that died.

A worker or deliverer that claims work holds a lease on it (node/jobstore.py). While the
process lives, this daemon thread renews all of that process's leases every lease_s / 3, and
takes back jobs whose lease ran out elsewhere (their process was killed or its host lost).
Renewal is per process, not per job, so it works however the process runs its jobs (threads
or child processes): a job that hangs is the job time limit's business, not the lease's.
"""
from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING

from cephnode.node.logs import get_logger

if TYPE_CHECKING:
    from cephnode.node.jobstore import JobStore

log = get_logger("cephnode.leases")


class LeaseKeeper:
    def __init__(self, store: "JobStore", *, interval_s: float, owner: str):
        self.store = store
        self.interval_s = interval_s
        self.owner = owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cephnode-leases", daemon=True)

    def start(self) -> None:
        atexit.register(self.stop)  # at interpreter exit, stop before the database goes away
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.renew_leases(owner=self.owner)
                taken = self.store.reap_expired()
            except Exception as exc:  # the database is unreachable for a moment: try again next beat
                log.warning("lease_renewal_failed", owner=self.owner, error=f"{type(exc).__name__}: {exc}")
                continue
            if taken["requeued"] or taken["parked"]:
                log.warning("expired_leases_taken_back", requeued_jobs=taken["requeued"], parked_jobs=taken["parked"],
                            detail="a worker stopped renewing its claims (killed or host lost)")
