"""The Storage SCP: access control, C-ECHO, and C-STORE into the spool before answering Success."""
from __future__ import annotations

import ssl
import time
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from cephnode.config.schema import NodeConfig, ServerTls
from cephnode.dicom_io.spool import spool_path, write_atomic
from cephnode.dicom_io.transfer_syntaxes import RADIOGRAPH_STORAGE_CLASSES, accepted_transfer_syntaxes, can_decode, describe
from cephnode.node.jobstore import InstanceRecord, JobStore
from cephnode.node.logs import get_logger, phi_fields
from cephnode.node.selection import evaluate

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

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


def _header(data: bytes) -> tuple[Dataset | None, str | None]:
    """The dataset without its pixels, or why it cannot be parsed."""
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        # Touch the identifying elements now: pydicom converts lazily, and a wrong VR length
        # would otherwise surface later in a less helpful place.
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "Rows", "Columns"):
            ds.get(kw)
        return ds, None
    except Exception as exc:  # pydicom raises many types on hostile input
        return None, f"cannot parse the dataset: {type(exc).__name__}: {exc}"


def _uid(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
        return str(value).strip() if value else None
    except Exception:
        return None


class Receiver:
    def __init__(self, cfg: NodeConfig, store: JobStore, *, on_received=None):
        self.cfg = cfg
        self.store = store
        self.spool_dir = Path(cfg.storage.spool).resolve()
        self._on_received = on_received  # wakes the scheduler
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
        self._server = self.ae.start_server((listen.bind_address, listen.port), block=False,
                                            evt_handlers=handlers, ssl_context=ssl_context)
        if not self._allowed:
            log.warning("access_control_open", detail="no listen.allowed_callers: any calling AE is accepted")
        log.info("listening", ae_title=listen.ae_title, address=listen.bind_address, port=self.port,
                 tls=listen.tls.enabled, allowed_callers=sorted(self._allowed) or "any")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.cfg.listen.port

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
        ctx = {"sop_uid": sop_uid, "calling_ae": calling}
        try:
            if self.store.has_instance(sop_uid):
                self.store.record_instance(InstanceRecord(sop_uid, sop_class, None, None, transfer_syntax, "",
                                                          calling, host, False, None))
                log.info("duplicate_ignored", **ctx, detail="SOP Instance UID already received; not processed again")
                return STATUS_SUCCESS
            data = event.encoded_dataset(include_meta=True)
            ds, parse_error = _header(data)
            study_uid = _uid(ds, "StudyInstanceUID")
            path = write_atomic(spool_path(self.spool_dir, study_uid, sop_uid), data)
            t_spooled = time.perf_counter()
            failed_reason = parse_error
            if ds is not None:
                verdict = evaluate(ds, sop_class, self.cfg.selection)
                ds_sop = _uid(ds, "SOPInstanceUID")
                if ds_sop and ds_sop != sop_uid:
                    failed_reason = f"dataset SOP Instance UID {ds_sop} differs from the C-STORE request's"
            else:
                verdict = None
            selected = verdict.selected if verdict is not None else True
            reason = verdict.reason if verdict is not None else parse_error
            if selected and failed_reason is None and not can_decode(transfer_syntax):
                failed_reason = f"transfer syntax {describe(transfer_syntax)} cannot be decoded here"
            record = InstanceRecord(sop_uid, sop_class, study_uid, _uid(ds, "SeriesInstanceUID"), transfer_syntax,
                                    str(path), calling, host, selected, reason)
            new = self.store.record_instance(record, failed_reason=failed_reason)
        except OSError as exc:
            log.error("spool_write_failed", **ctx, error=str(exc))
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # never let one instance take the SCP down
            log.exception("store_failed", **ctx, error=f"{type(exc).__name__}: {exc}")
            return STATUS_OUT_OF_RESOURCES
        timing = {"spool_ms": round((t_spooled - t0) * 1000, 2), "total_ms": round((time.perf_counter() - t0) * 1000, 2)}
        fields = {**ctx, "study_uid": study_uid, "transfer_syntax": transfer_syntax, "bytes": len(data), **timing,
                  **phi_fields(ds)}
        if not new:
            log.info("duplicate_ignored", **fields)
        elif failed_reason is not None:
            log.warning("instance_unusable", **fields, reason=failed_reason)
        elif selected:
            log.info("instance_received", **fields)
        else:
            log.info("instance_skipped", **fields, reason=reason)
        if self._on_received is not None:
            self._on_received()
        return STATUS_SUCCESS
