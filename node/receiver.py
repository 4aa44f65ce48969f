"""The Storage SCP: access control, C-ECHO, and C-STORE into the spool before answering Success."""
from __future__ import annotations

import errno
import sqlite3
import ssl
import tempfile
import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from cephnode.config.schema import NodeConfig, ServerTls
from cephnode.dicom_io.header import read_header
from cephnode.dicom_io.spool import adopt_file, is_valid_uid, safe_name, spool_path, write_atomic
from cephnode.dicom_io.transfer_syntaxes import RADIOGRAPH_STORAGE_CLASSES, accepted_transfer_syntaxes, can_decode, describe
from cephnode.node.jobstore import InstanceRecord, JobStore
from cephnode.node.logs import get_logger, phi_fields, sanitize_error
from cephnode.node.transport import start_server
from cephnode.node.selection import evaluate

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DATASET_MISMATCH = 0xA900   # "Data Set does not match SOP Class"

log = get_logger("cephnode.receiver")


def server_ssl_context(tls: ServerTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    password = tls.key_password.get_secret_value() if tls.key_password else None
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=password)
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _database_unavailable(exc: BaseException) -> bool:
    """A queue database that cannot take the write now (SQLite locked or busy, PostgreSQL
    unreachable): transient, unlike a bug."""
    kind = type(exc)
    return isinstance(exc, sqlite3.OperationalError) or (
        kind.__module__.startswith("psycopg") and kind.__name__ == "OperationalError")


def _uid(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
        return str(value).strip() if value else None
    except Exception:
        return None


class _PerUidLocks:
    """Concurrent C-STOREs of one SOP Instance UID (two associations racing) are serialised:
    the second sees the first's row and is a duplicate, not a second write of the file."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}   # uid -> [lock, users]

    def __call__(self, uid: str):
        return _UidLock(self, uid)


class _UidLock:
    def __init__(self, owner: _PerUidLocks, uid: str):
        self.owner, self.uid = owner, uid

    def __enter__(self):
        with self.owner._guard:
            entry = self.owner._locks.setdefault(self.uid, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()

    def __exit__(self, *exc):
        with self.owner._guard:
            entry = self.owner._locks[self.uid]
            entry[0].release()
            entry[1] -= 1
            if entry[1] == 0:
                del self.owner._locks[self.uid]


class _Transient:
    """A condition that lasts (disk full, database locked): logged once when it starts and
    once when it ends, not once per C-STORE."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active: str | None = None

    def set(self, what: str, detail: str) -> None:
        with self._lock:
            changed, self.active = self.active != what, what
        if changed:
            log.error("receive_paused", condition=what, detail=detail,
                      action="C-STOREs are answered 0xA700 (out of resources) until it clears")

    def clear(self) -> None:
        with self._lock:
            was, self.active = self.active, None
        if was:
            log.info("receive_resumed", condition=was)


class Receiver:
    def __init__(self, cfg: NodeConfig, store: JobStore, *, on_received=None, metrics=None, watermark=None):
        self.cfg = cfg
        self.store = store
        self.metrics = metrics        # node.metrics.NodeMetrics, or None
        self.watermark = watermark    # node.metrics.DiskWatermark, or None
        self.spool_dir = Path(cfg.storage.spool).resolve()
        self._on_received = on_received  # wakes the scheduler
        self.incoming_dir = self.spool_dir / ".incoming"   # C-STOREs being received (same filesystem)
        self._uid_locks = _PerUidLocks()
        self.transient = _Transient()
        self._server = None
        self._allowed = {c.ae_title: c for c in cfg.listen.allowed_callers}
        ae = AE(ae_title=cfg.listen.ae_title)
        ae.maximum_associations = cfg.listen.max_associations
        ae.maximum_pdu_size = cfg.listen.max_pdu_bytes
        ae.acse_timeout = cfg.listen.acse_timeout_s
        ae.dimse_timeout = cfg.listen.dimse_timeout_s
        ae.network_timeout = cfg.listen.network_timeout_s
        ae.require_called_aet = cfg.listen.check_called_ae
        # pynetdicom does not add Verification by itself: without it C-ECHO fails.
        ae.add_supported_context(Verification)
        syntaxes = accepted_transfer_syntaxes()
        for sop_class in RADIOGRAPH_STORAGE_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        self.ae = ae

    # ---- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        listen = self.cfg.listen
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_C_STORE, self._on_store)]
        ssl_context = server_ssl_context(listen.tls) if listen.tls.enabled else None
        # Data sets go to a file as their fragments arrive, never whole into memory; the file
        # is in the spool's filesystem, so keeping it is a rename. pynetdicom names it through
        # the tempfile module (one process-wide setting; nothing else here relies on it).
        self.incoming_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.incoming_dir.iterdir():   # unacknowledged transfers cut by a crash
            stale.unlink(missing_ok=True)
        tempfile.tempdir = str(self.incoming_dir)
        _config.STORE_RECV_CHUNKED_DATASET = True
        self._server = start_server(self.ae, (listen.bind_address, listen.port), limits=self.cfg.limits,
                                    tls_context=ssl_context, evt_handlers=handlers, incoming_dir=str(self.incoming_dir))
        if not self._allowed:
            log.warning("access_control_open", detail="no listen.allowed_callers: any calling AE is accepted")
        log.info("listening", ae_title=listen.ae_title, address=listen.bind_address, port=self.port,
                 tls=listen.tls.enabled, allowed_callers=sorted(self._allowed) or "any")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.cfg.listen.port

    @property
    def listening(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Stop accepting associations; in-flight C-STOREs finish their spool write first
        (shutdown waits for the association threads)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and any(a.is_acceptor and a.is_alive() for a in self.ae.active_associations):
            time.sleep(0.05)

    # ---- handlers ---------------------------------------------------------------------
    def _on_requested(self, event) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        reason = self._refusal(calling, host)
        if reason is not None:
            log.warning("association_rejected", calling_ae=calling, peer_host=host, reason=reason)
            # 1 = rejected permanent, 1 = service user, 3 = calling AE title not recognised
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ, as pynetdicom's own rejections do

    def _refusal(self, calling: str, host: str) -> str | None:
        if not self._allowed:
            return None
        caller = self._allowed.get(calling)
        if caller is None:
            return f"calling AE title {calling!r} is not allowed"
        if caller.hosts and host not in caller.hosts:
            return f"calling AE title {calling!r} is not allowed from {host}"
        return None

    def _on_echo(self, event) -> int:
        log.info("echo", calling_ae=str(event.assoc.requestor.ae_title).strip(),
                 peer_host=str(event.assoc.requestor.address))
        return STATUS_SUCCESS

    def _on_store(self, event) -> int:
        t0 = time.perf_counter()
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID or "").strip()
        sop_class = str(req.AffectedSOPClassUID or "").strip()
        calling = str(event.assoc.requestor.ae_title).strip()
        host = str(event.assoc.requestor.address)
        transfer_syntax = str(event.context.transfer_syntax)
        ctx = {"sop_uid": sop_uid if is_valid_uid(sop_uid) else safe_name(sop_uid), "calling_ae": calling}
        sock = event.assoc.dul.socket
        oversize = sock.take_oversize() if hasattr(sock, "take_oversize") else None
        no_space = sock.take_no_space() if hasattr(sock, "take_no_space") else None
        limit = self.cfg.limits.max_instance_mb * 2**20
        if self.watermark is not None and self.watermark.low():
            # Refuse before writing anything: the sender keeps the instance and retries later.
            log.error("store_refused_disk_low", **ctx, free_bytes=self.watermark.free_bytes(),
                      min_free_bytes=self.watermark.min_free_bytes)
            self._count_refused("disk_low")
            return STATUS_OUT_OF_RESOURCES
        if no_space is not None:
            # the disk filled (node.transport dropped the fragments): transient, the sender retries
            self.transient.set("disk_full", f"no room on the spool's disk for a {no_space}-byte data set")
            self._count_refused("disk_full")
            return STATUS_OUT_OF_RESOURCES
        if oversize is not None:
            log.warning("instance_refused", **ctx, status="0xA700",
                        reason=f"data set larger than limits.max_instance_mb ({self.cfg.limits.max_instance_mb} MiB)")
            self._count_refused("too_large")
            return STATUS_OUT_OF_RESOURCES
        try:
            incoming = Path(event.dataset_path)
        except AttributeError:   # not chunked (should not happen: start() turns it on)
            incoming = None
        try:
            with self._uid_locks(sop_uid):
                status = self._store_locked(event, incoming, sop_uid, sop_class, calling, host, transfer_syntax,
                                            ctx, t0, limit)
        except Exception as exc:
            if isinstance(exc, OSError) or _database_unavailable(exc):
                # A full disk or a locked database is transient: the sender retries later.
                what = "disk_full" if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) else (
                    "database_unavailable" if _database_unavailable(exc) else "spool_write_failed")
                self.transient.set(what, sanitize_error(f"{type(exc).__name__}: {exc}"))
            else:  # never let one instance take the SCP down
                log.error("store_failed", **ctx, error=sanitize_error(f"{type(exc).__name__}: {exc}"))
            self._count_refused("error")
            return STATUS_OUT_OF_RESOURCES
        if status == STATUS_SUCCESS:
            self.transient.clear()
            if self._on_received is not None:
                self._on_received()
        return status

    def _store_locked(self, event, incoming: Path | None, sop_uid: str, sop_class: str, calling: str, host: str,
                      transfer_syntax: str, ctx: dict, t0: float, limit: int) -> int:
        if self.store.has_instance(sop_uid):
            self.store.record_instance(InstanceRecord(sop_uid, sop_class, None, None, transfer_syntax, "",
                                                      calling, host, False, None))
            log.info("duplicate_ignored", **ctx, detail="SOP Instance UID already received; not processed again")
            self._count("duplicate")
            return STATUS_SUCCESS
        if incoming is None:
            data = event.encoded_dataset(include_meta=True)
            incoming = write_atomic(self.incoming_dir / f"{safe_name(sop_uid)}.in", data)
        size = incoming.stat().st_size
        if size > limit:
            log.warning("instance_refused", **ctx, status="0xA700", bytes=size,
                        reason=f"data set larger than limits.max_instance_mb ({self.cfg.limits.max_instance_mb} MiB)")
            self._count_refused("too_large")
            return STATUS_OUT_OF_RESOURCES
        header = read_header(incoming, transfer_syntax, max_bytes=limit)
        if header.too_large is not None:
            log.warning("instance_refused", **ctx, status="0xA700", inflated_bytes_seen=header.too_large,
                        reason=f"deflated data set inflates past limits.max_instance_mb "
                               f"({self.cfg.limits.max_instance_mb} MiB)")
            self._count_refused("too_large")
            return STATUS_OUT_OF_RESOURCES
        ds, parse_error = header.ds, header.error
        ds_class = _uid(ds, "SOPClassUID")
        if ds_class and ds_class != sop_class:
            log.warning("instance_refused", **ctx, status="0xA900", command_sop_class=sop_class,
                        dataset_sop_class=ds_class if is_valid_uid(ds_class) else safe_name(ds_class),
                        reason="the data set's SOP Class differs from the C-STORE request's")
            self._count_refused("sop_class_mismatch")
            return STATUS_DATASET_MISMATCH
        study_uid = _uid(ds, "StudyInstanceUID")
        path = spool_path(self.spool_dir, study_uid, sop_uid)
        adopt_file(incoming, path)
        t_spooled = time.perf_counter()
        failed_reason = parse_error
        if ds is not None:
            verdict = evaluate(ds, sop_class, self.cfg.selection)
            ds_sop = _uid(ds, "SOPInstanceUID")
            if ds_sop and ds_sop != sop_uid:
                failed_reason = "the data set's SOP Instance UID differs from the C-STORE request's"
            bad = [kw for kw, v in (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study_uid),
                                    ("SeriesInstanceUID", _uid(ds, "SeriesInstanceUID")), ("SOPClassUID", sop_class))
                   if not is_valid_uid(v)]
            if bad and failed_reason is None:
                failed_reason = f"invalid UID in {', '.join(bad)} (not a valid DICOM UID; never copied into outputs)"
        else:
            verdict = None
        selected = verdict.selected if verdict is not None else True
        reason = verdict.reason if verdict is not None else parse_error
        if selected and failed_reason is None and not can_decode(transfer_syntax):
            failed_reason = f"transfer syntax {describe(transfer_syntax)} cannot be decoded here"
        series_uid = _uid(ds, "SeriesInstanceUID")
        record = InstanceRecord(sop_uid, sop_class, study_uid if is_valid_uid(study_uid) else safe_name(study_uid),
                                series_uid if is_valid_uid(series_uid) else safe_name(series_uid), transfer_syntax,
                                str(path), calling, host, selected, reason)
        new = self.store.record_instance(record, failed_reason=failed_reason)
        timing = {"spool_ms": round((t_spooled - t0) * 1000, 2), "total_ms": round((time.perf_counter() - t0) * 1000, 2)}
        fields = {**ctx, "study_uid": record.study_uid, "transfer_syntax": transfer_syntax, "bytes": path.stat().st_size,
                  **timing, **phi_fields(ds)}
        if not new:
            log.info("duplicate_ignored", **fields)
            self._count("duplicate")
        elif failed_reason is not None:
            log.warning("instance_unusable", **fields, reason=failed_reason)
            self._count("unusable")
        elif selected:
            log.info("instance_received", **fields)
            self._count("received")
        else:
            log.info("instance_skipped", **fields, reason=reason)
            self._count("skipped")
        return STATUS_SUCCESS

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.instance(outcome)

    def _count_refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.store_refused(reason)
