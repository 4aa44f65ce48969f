"""Log events are JSON with UIDs; patient identification only when the admin turns it on."""
from __future__ import annotations

import io
import json

import numpy as np

from cephnode.node import logs
from tests.support import dicomgen


def _events(log_phi: bool) -> list[dict]:
    stream = io.StringIO()
    logs.configure("INFO", "json", log_phi, stream=stream)
    ds = dicomgen.make_dx(np.zeros((70, 70), np.uint8), patient_name="Doe^Jane", patient_id="PID-42")
    log = logs.get_logger("t")
    log.info("instance_received", sop_uid=str(ds.SOPInstanceUID), **logs.phi_fields(ds))
    log.info("careless_event", patient_name=str(ds.PatientName))  # dropped by the processor too
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_phi_is_dropped_unless_configured():
    try:
        hidden, careless = _events(log_phi=False)
        assert hidden["event"] == "instance_received" and hidden["sop_uid"].count(".") > 3
        assert "patient_id" not in hidden and "patient_name" not in hidden and "patient_name" not in careless
        shown = _events(log_phi=True)[0]
        assert shown["patient_name"] == "Doe^Jane" and shown["patient_id"] == "PID-42"
    finally:
        import structlog

        logs._state["log_phi"] = False
        structlog.reset_defaults()  # leave other tests the logging they started with
