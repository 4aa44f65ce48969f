"""Deliveries: over up to `max_associations` associations at once, and in the transfer syntax
each object was stored in where the peer takes it.

The peer is a real DICOM Storage SCP on a loopback socket (pynetdicom), slow on purpose: each
C-STORE takes 0.15 s, as an archive that indexes what it stores does. It records how many
associations were open at once and every instance it stored. The queue is real SQLite and real
PostgreSQL (the queue_target fixture)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

from cephnode.config.loading import parse_config
from cephnode.config.schema import ClientTls
from cephnode.node.delivery import Deliverer, Peer
from cephnode.node.jobstore import InstanceRecord, JobStore, PlannedDelivery
from tests.support import dicomgen
from tests.support.orthanc import free_port
from tests.support.postgres import queue_target  # noqa: F401 (a fixture)

DX = str(DigitalXRayImageStorageForPresentation)
STORE_S = 0.15


class SlowArchive:
    """A Storage SCP that takes STORE_S per object and counts the associations open at once."""

    def __init__(self, max_associations: int = 10) -> None:
        self.port = free_port()
        self.stored: list[str] = []
        self.open_now = 0
        self.most_open = 0
        self._lock = threading.Lock()
        ae = AE(ae_title="ARCHIVE")
        ae.maximum_associations = max_associations      # more are rejected: local limit exceeded
        ae.add_supported_context(DX, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_ACCEPTED, self._opened), (evt.EVT_RELEASED, self._closed), (evt.EVT_ABORTED, self._closed),
            (evt.EVT_C_STORE, self._store)])

    def _opened(self, event) -> None:
        with self._lock:
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)

    def _closed(self, event) -> None:
        with self._lock:
            self.open_now -= 1

    def _store(self, event) -> int:
        time.sleep(STORE_S)
        with self._lock:
            self.stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def archive():
    a = SlowArchive()
    yield a
    a.stop()


def _deliveries(store: JobStore, folder: Path, n: int, destination: str) -> list[str]:
    """n processed jobs, each with one object (a small DX file) to send to `destination`."""
    img = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    for i in range(n):
        store.record_instance(InstanceRecord(f"1.9.{i}", DX, "1.9", "1.9.1", "1.2.840.10008.1.2.1",
                                             f"/spool/1.9.{i}.dcm", "MOD", "127.0.0.1", True, None), now=0)
    assert store.close_quiet_studies(0, now=1) == [("1.9", n)]
    uids = []
    while (job := store.claim_job()) is not None:
        ds = dicomgen.make_dx(img, pixel_spacing_mm=(0.1, 0.1))
        path = dicomgen.save(ds, folder / f"out-{job.id}.dcm")
        obj = {"kind": "sr", "sop_uid": str(ds.SOPInstanceUID), "sop_class": DX, "path": str(path)}
        store.finish_processing(job.id, [obj], [PlannedDelivery(destination, "ARCHIVE", "127.0.0.1", 0, **obj)], {})
        uids.append(str(ds.SOPInstanceUID))
    return uids


def _deliverer(store: JobStore, archive: SlowArchive, max_associations: int) -> Deliverer:
    cfg = parse_config({"destinations": [{"name": "pacs", "ae_title": "ARCHIVE", "host": "127.0.0.1",
                                          "port": archive.port, "kinds": ["sr"],
                                          "max_associations": max_associations}]})
    return Deliverer(cfg, store)


@pytest.mark.parametrize("max_associations", [1, 3])
def test_a_destination_gets_at_most_max_associations_at_once(queue_target, archive, tmp_path, max_associations):
    store = JobStore(queue_target)
    uids = _deliveries(store, tmp_path, 12, "pacs")
    deliverer = _deliverer(store, archive, max_associations)
    while deliverer.run_once():
        pass
    assert sorted(archive.stored) == sorted(uids)                 # every object once, none twice
    assert archive.most_open == max_associations                  # as many as allowed, no more
    summary = store.summary()
    assert summary["deliveries"] == {"done": 12} and summary["jobs"] == {"done": 12}
    store.close()


def test_objects_of_a_peer_that_is_down_are_kept_for_a_retry_on_every_association(queue_target, tmp_path):
    """Each association's share fails on its own and is retried later, none is lost."""
    store = JobStore(queue_target)
    _deliveries(store, tmp_path, 6, "pacs")
    down = SlowArchive()
    down.stop()                                                   # its port now refuses connections
    deliverer = _deliverer(store, down, 3)
    assert deliverer.run_once() == 6
    rows = store.deliveries()
    assert len(rows) == 6 and all(r["state"] == "pending" and r["attempts"] == 1 for r in rows)
    assert all("cannot connect" in r["last_error"] or "unreachable" in r["last_error"] for r in rows), rows
    store.close()


def test_a_destination_that_takes_fewer_associations_gets_everything_in_the_same_round(queue_target, tmp_path):
    """An archive that allows one association per caller: the refused associations' objects go
    after the others, in the same round, with no failed attempt counted; later rounds ask for
    one association only."""
    store = JobStore(queue_target)
    uids = _deliveries(store, tmp_path, 9, "pacs")
    single = SlowArchive(max_associations=1)
    try:
        deliverer = _deliverer(store, single, 3)
        assert deliverer.run_once() == 9
        assert sorted(single.stored) == sorted(uids) and single.most_open == 1
        rows = store.deliveries()
        assert all(r["state"] == "done" and r["attempts"] == 1 and r["last_error"] is None for r in rows), rows
        peer = Peer("pacs", "ARCHIVE", "127.0.0.1", single.port, "CEPHNODE", ClientTls())
        assert deliverer._associations(peer) == 1
    finally:
        single.stop()
    store.close()


def test_the_tracing_sheet_reaches_orthanc_as_the_jpeg_it_was_stored_in(tmp_path):
    """Each compressed syntax is proposed in a context of its own: from a context offering JPEG
    and the uncompressed syntaxes together, Orthanc picks uncompressed, and the 1.6 MB sheet was
    decompressed by the node and archived as raw RGB."""
    from cephnode.dicom_io.outputs import build_outputs
    from tests.support.orthanc import start_orthanc
    from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case

    case = isbi_report_case("006")
    (sc,) = build_outputs(case.source, case.result, kinds="sc", pack_name=PACK_NAME, pack_version=PACK_VERSION).values()
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    store = JobStore(tmp_path / "q.sqlite")
    store.record_instance(InstanceRecord("1.9.0", DX, "1.9", "1.9.1", "1.2.840.10008.1.2.1", "/spool/x.dcm", "MOD",
                                         "127.0.0.1", True, None), now=0)
    store.close_quiet_studies(0, now=1)
    job = store.claim_job()
    obj = {"kind": "sc", "sop_uid": str(sc.SOPInstanceUID), "sop_class": str(sc.SOPClassUID), "path": str(path)}
    store.finish_processing(job.id, [obj], [PlannedDelivery("pacs", "ORTHANC", "127.0.0.1", 0, **obj)], {})
    with start_orthanc(tmp_path / "orthanc") as pacs:
        cfg = parse_config({"destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                                              "port": pacs.dicom_port, "kinds": ["sc"]}]})
        assert Deliverer(cfg, store).run_once() == 1
        assert store.summary()["deliveries"] == {"done": 1}
        (instance,) = pacs.get_json("/instances")
        syntax = pacs.request("GET", f"/instances/{instance}/metadata/TransferSyntax").decode()
        assert syntax == "1.2.840.10008.1.2.4.50"                          # JPEG baseline, as stored
        archived = len(pacs.request("GET", f"/instances/{instance}/file"))
        assert archived < int(sc.Rows) * int(sc.Columns) * 3 / 4                # not raw RGB
        assert abs(archived - path.stat().st_size) < 1024                      # our file (Orthanc redoes the meta)
    store.close()
