"""structlog set-up: one JSON object per line on stderr, with UIDs and timings.

Patient names and IDs are dropped from every event unless the admin sets logging.log_phi.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

PHI_KEYS = frozenset({"patient_name", "patient_id", "patient_birth_date", "other_patient_ids", "accession_number"})
_state = {"log_phi": False}


def _drop_phi(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if not _state["log_phi"]:
        for key in PHI_KEYS.intersection(event):
            del event[key]
    return event


def configure(level: str = "INFO", fmt: str = "json", log_phi: bool = False, stream=None) -> None:
    _state["log_phi"] = log_phi
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_phi,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs through the standard library: keep its warnings, quiet its chatter.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format='{"level": "%(levelname)s", "logger": "%(name)s", "event": "%(message)s"}')
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)


def phi_fields(ds: Any) -> dict[str, str]:
    """Patient identification for a log event (dropped by _drop_phi unless log_phi)."""
    if not _state["log_phi"] or ds is None:
        return {}
    try:
        return {"patient_name": str(ds.get("PatientName", "")), "patient_id": str(ds.get("PatientID", ""))}
    except Exception:
        return {}


def get_logger(name: str = "cephnode"):
    return structlog.get_logger(name)
