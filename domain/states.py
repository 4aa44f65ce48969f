"""The states of the node's work, as the queue stores them (node.jobstore).

A study is open until its quiet period passes; each selected instance of a closed study is a
job; each object a job produces for a destination is a delivery:

    job:       queued -> processing -> delivering -> done
                              |             |
                              +-> failed <--+        (cephnode retry queues it again)
    delivery:  pending -> done | failed              (failed = parked after the last retry)
"""
from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class JobState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"


UNFINISHED_JOB_STATES: tuple[JobState, ...] = (JobState.QUEUED, JobState.PROCESSING, JobState.DELIVERING)


class DeliveryState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
