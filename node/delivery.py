"""C-STORE of produced objects to their destinations, with exponential backoff kept in SQLite.

One association per destination and round; each object's outcome is committed on its own, so
a crash mid-round repeats at most the object in flight (same UIDs: the archive replaces it).
"""
from __future__ import annotations

import ssl
import time
from collections import defaultdict
from dataclasses import dataclass

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from cephnode.config.schema import ClientTls, NodeConfig
from cephnode.node.jobstore import Delivery, JobStore
from cephnode.node.logs import get_logger

log = get_logger("cephnode.delivery")

SOP_CLASS_NOT_SUPPORTED = 0x0122
# Warnings are stored objects (PS3.4 B.2.3): coercion, elements discarded, not checked.
SUCCESS_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007, 0x0107, 0x0116}


@dataclass
class Peer:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    tls: ClientTls


def client_ssl_context(tls: ClientTls) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        password = tls.key_password.get_secret_value() if tls.key_password else None
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None, password=password)
    return ctx


class PermanentRefusal(Exception):
    """The destination will never take this object (e.g. it rejects the SOP class)."""


class Deliverer:
    def __init__(self, cfg: NodeConfig, store: JobStore):
        self.cfg = cfg
        self.store = store
        self._destinations = {d.name: d for d in cfg.destinations}

    def peer_for(self, d: Delivery) -> Peer:
        own = self.cfg.listen.ae_title
        dest = self._destinations.get(d.destination)
        if dest is not None:  # configured: today's settings win, so a fixed port helps a retry
            return Peer(dest.name, dest.ae_title, dest.host, dest.port, dest.calling_ae_title or own, dest.tls)
        tls = self.cfg.return_to_sender.tls if d.destination == "sender" else ClientTls()
        return Peer(d.destination, d.ae_title, d.host, d.port, own, tls)

    def run_once(self, stop=None) -> int:
        """Attempt every due delivery; returns how many were attempted."""
        due = self.store.due_deliveries()
        groups: dict[tuple, list[Delivery]] = defaultdict(list)
        peers: dict[tuple, Peer] = {}
        for d in due:
            peer = self.peer_for(d)
            key = (peer.name, peer.ae_title, peer.host, peer.port)
            peers[key] = peer
            groups[key].append(d)
        for key, items in groups.items():
            peer = peers[key]
            if stop is not None and stop.is_set():
                break
            self._send(peer, items, stop)
        return len(due)

    # ---- one association ----------------------------------------------------------------
    def _send(self, peer: Peer, items: list[Delivery], stop) -> None:
        where = f"{peer.name} ({peer.ae_title}@{peer.host}:{peer.port})"
        if peer.name not in self._destinations and peer.name != "sender":
            for d in items:
                self._failed(d, peer, f"destination {peer.name!r} is no longer configured", permanent=True)
            return
        ae = AE(ae_title=peer.calling_ae_title)
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.network_timeout = 120
        syntaxes: dict[int, str] = {}
        for d in items:
            try:  # only the file meta now: objects are read one at a time while sending
                syntaxes[d.id] = str(read_file_meta_info(d.path).TransferSyntaxUID)
            except Exception as exc:
                self._failed(d, peer, f"object file unreadable: {exc}", permanent=True)
        pending = [d for d in items if d.id in syntaxes]
        if not pending:
            return
        contexts: dict[str, set[str]] = defaultdict(set)
        for d in pending:
            contexts[d.sop_class].update({syntaxes[d.id], ExplicitVRLittleEndian, ImplicitVRLittleEndian})
        for sop_class, ts_set in list(contexts.items())[:128]:
            ae.add_requested_context(sop_class, sorted(ts_set))
        tls_args = None
        try:
            if peer.tls.enabled:
                tls_args = (client_ssl_context(peer.tls), peer.tls.server_hostname or peer.host)
            assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
        except Exception as exc:
            for d in pending:
                self._failed(d, peer, f"cannot connect to {where}: {type(exc).__name__}: {exc}")
            return
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "is unreachable or aborted the association"
            for d in pending:
                self._failed(d, peer, f"{where} {why}")
            return
        try:
            for d in pending:
                if stop is not None and stop.is_set():
                    break
                if not assoc.is_established:
                    self._failed(d, peer, f"{where}: association lost")
                    continue
                try:
                    ds = pydicom.dcmread(d.path)
                except Exception as exc:
                    self._failed(d, peer, f"object file unreadable: {exc}", permanent=True)
                    continue
                self._store_one(assoc, d, ds, peer, where)
        finally:
            if assoc.is_established:
                assoc.release()

    def _store_one(self, assoc, d: Delivery, ds, peer: Peer, where: str) -> None:
        t = time.perf_counter()
        name = UID(d.sop_class).name
        try:
            status = assoc.send_c_store(ds)
        except ValueError as exc:
            # pynetdicom: no accepted presentation context for this SOP class / transfer syntax
            self._failed(d, peer, f"{where} rejected SOP class {name} ({d.sop_class}): {exc}", permanent=True)
            return
        except Exception as exc:
            self._failed(d, peer, f"C-STORE to {where} failed: {type(exc).__name__}: {exc}")
            return
        code = getattr(status, "Status", None) if status else None
        if code is None:
            self._failed(d, peer, f"no C-STORE response from {where} (timeout or connection lost)")
        elif code in SUCCESS_STATUSES:
            self.store.delivery_succeeded(d)
            log.info("delivered", job_id=d.job_id, destination=peer.name, kind=d.kind, sop_uid=d.sop_uid,
                     status=f"0x{code:04X}", store_ms=round((time.perf_counter() - t) * 1000, 2))
        elif code == SOP_CLASS_NOT_SUPPORTED:
            self._failed(d, peer, f"{where} rejected SOP class {name} ({d.sop_class}): status 0x0122",
                         permanent=True)
        else:
            comment = str(status.get("ErrorComment", "")) if hasattr(status, "get") else ""
            self._failed(d, peer, f"{where} answered C-STORE status 0x{code:04X} {comment}".strip())

    def _failed(self, d: Delivery, peer: Peer, error: str, *, permanent: bool = False) -> None:
        attempts = d.attempts + 1
        last = permanent or attempts >= self.cfg.retry.max_attempts
        retry_in = None if last else self.cfg.retry.delay_after(attempts)
        job_state = self.store.delivery_failed(d, error, retry_in_s=retry_in)
        fields = dict(job_id=d.job_id, destination=peer.name, kind=d.kind, sop_uid=d.sop_uid, attempt=attempts,
                      error=error)
        if last:
            log.error("delivery_parked", **fields, job_state=job_state,
                      detail="permanent refusal" if permanent else "last retry failed")
        else:
            log.warning("delivery_retry_scheduled", **fields, retry_in_s=round(retry_in, 2))
