"""What one `cephnode serve` process does: `--role receiver|worker|all` (default all).

  receiver  the Storage SCP and the study scheduler (quiet period): writes the shared spool
            and the queue; loads no model
  worker    processing workers, delivery and retention: claims jobs and deliveries from the queue
  all       both: the single-process node (the only role the embedded SQLite queue allows)

Several receivers and workers share one PostgreSQL queue and one spool/outbox folder; the
database is the only coordinator (node/jobstore.py: claims, leases).
"""
from __future__ import annotations

from enum import Enum


class Role(str, Enum):
    ALL = "all"
    RECEIVER = "receiver"
    WORKER = "worker"

    @property
    def receives(self) -> bool:
        return self in (Role.ALL, Role.RECEIVER)

    @property
    def processes(self) -> bool:
        return self in (Role.ALL, Role.WORKER)


ROLE_NAMES = [r.value for r in Role]


def check_role(role: Role, *, shared_store: bool) -> None:
    """A split role needs a queue other processes can reach."""
    if role is not Role.ALL and not shared_store:
        raise ValueError(f"--role {role.value} needs a shared queue: set storage.database to a postgresql:// URL "
                         "(the embedded SQLite queue belongs to one process, --role all)")
