"""C-STORE of produced objects to their destinations, with exponential backoff kept in the queue.

Each round sends the due objects of a destination over up to `max_associations` associations
at once (one thread each): an archive takes tens of milliseconds to store an object whatever its
size (Orthanc 1.10: about 85 ms per C-STORE, 17 ms per REST upload of the same file), so one
association at a time capped a destination at about a dozen objects (four images' results) per
second, fewer than the node makes in a burst (issue 14). Each object's outcome is committed on its own, so
a crash mid-round repeats at most the objects in flight (same UIDs: the archive replaces them).

An object whose transfer syntax the peer accepted as it is goes out as the file's own bytes
(pynetdicom's chunked send from a path): decoding the file and encoding it again cost about as
much as building the SR had (~1,500 content items), in the node's own process, for nothing.
Only a peer that needs another syntax gets a decoded, converted copy.
"""
from __future__ import annotations

import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config as pynetdicom_config

from cephnode.config.schema import ClientTls, NodeConfig
from cephnode.domain.outputs import SOP_CLASSES, OutputKind
from cephnode.node.jobstore import Delivery, JobStore
from cephnode.node.logs import get_logger

log = get_logger("cephnode.delivery")

# send_c_store(path) streams the file's data set as stored instead of decoding and re-encoding
# it; this process only ever passes paths that the peer accepted in the file's transfer syntax.
pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True

# How long a destination that refused some of our associations is asked for no more than it
# took (a restart, or an admin raising its limit, is noticed after this).
LEARNED_LIMIT_S = 3600.0
REFUSED_PAUSE_S = 1.0
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


class Deliverer:
    def __init__(self, cfg: NodeConfig, store: JobStore, *, metrics=None):
        self.cfg = cfg
        self.store = store
        self.metrics = metrics   # node.metrics.NodeMetrics, or None
        self._destinations = {d.name: d for d in cfg.destinations}
        # peer -> (associations it accepted at once, when it refused more): see _after_refusals
        self._learned_limits: dict[tuple, tuple[int, float]] = {}

    def peer_for(self, d: Delivery) -> Peer:
        own = self.cfg.listen.ae_title
        dest = self._destinations.get(d.destination)
        if dest is not None:  # configured: today's settings win, so a fixed port helps a retry
            return Peer(dest.name, dest.ae_title, dest.host, dest.port, dest.calling_ae_title or own, dest.tls)
        tls = self.cfg.return_to_sender.tls if d.destination == "sender" else ClientTls()
        return Peer(d.destination, d.ae_title, d.host, d.port, own, tls)

    def run_once(self, stop=None) -> int:
        """Attempt the due deliveries this process could claim (others may be sending the
        rest: claims are leased, node/jobstore.py); returns how many were attempted."""
        due = self.store.claim_deliveries()
        groups: dict[tuple, list[Delivery]] = defaultdict(list)
        peers: dict[tuple, Peer] = {}
        web: dict[str, list[Delivery]] = defaultdict(list)
        for d in due:
            dest = self._destinations.get(d.destination)
            if dest is not None and dest.type == "dicomweb":
                web[dest.name].append(d)
                continue
            peer = self.peer_for(d)
            key = _peer_key(peer)
            peers[key] = peer
            groups[key].append(d)
        tasks = []
        refusals: dict[tuple, tuple[int, list]] = {}     # peer -> (associations tried, refused shares)
        for key, items in groups.items():
            peer = peers[key]
            shares = _shares(items, self._associations(peer))
            if len(shares) == 1:
                tasks.append((self._send, peer, shares[0]))
                continue
            refused: list = []
            refusals[key] = (len(shares), refused)
            tasks += [(partial(self._send, refused=refused), peer, share) for share in shares]
        tasks += [(self._send_web, self._destinations[name], items) for name, items in web.items()]
        _run_together(tasks, stop)
        for key, (tried, refused) in refusals.items():
            if refused:
                self._after_refusals(peers[key], tried, refused, stop)
        return len(due)

    def _associations(self, peer: Peer) -> int:
        """How many associations this peer gets at once: its destination's max_associations, or
        fewer where the peer has refused more within the last LEARNED_LIMIT_S; a modality
        taking its results back (return to sender) gets one."""
        dest = self._destinations.get(peer.name)
        if dest is None:
            return 1
        learned = self._learned_limits.get(_peer_key(peer))
        if learned is not None and time.monotonic() - learned[1] < LEARNED_LIMIT_S:
            return min(dest.max_associations, learned[0])
        return dest.max_associations

    def _after_refusals(self, peer: Peer, tried: int, refused: list, stop) -> None:
        """Some of a round's associations to one peer were not made. If the peer answered (it
        accepted others, or it rejected them: an archive may allow one association per calling
        AE, and pynetdicom rejects every one of several that arrive at once beyond its limit),
        it takes fewer at once than configured: the objects go now over one more association,
        no attempt counted for the refusal, and this process asks for no more than the peer
        took, for LEARNED_LIMIT_S. If none was made and none was answered, the peer is down and
        every object waits for its retry, as over a single association."""
        accepted = tried - len(refused)
        if accepted == 0 and not any(rejected for _, _, rejected in refused):
            for pending, why, _ in refused:
                for d in pending:
                    self._failed(d, peer, why)
            return
        limit = max(1, accepted)
        self._learned_limits[_peer_key(peer)] = (limit, time.monotonic())
        log.warning("destination_refused_association", destination=peer.name, accepted=accepted, asked=tried,
                    detail=f"sending the rest over one association; at most {limit} at once for "
                           f"{LEARNED_LIMIT_S / 60:.0f} min (destinations[].max_associations sets it for good)")
        # a moment first: a peer counts an association it refused or that just ended until its
        # own thread or process for it has ended (pynetdicom does, for some milliseconds)
        if stop is not None and stop.wait(REFUSED_PAUSE_S):
            return
        if stop is None:
            time.sleep(REFUSED_PAUSE_S)
        self._send(peer, [d for pending, _, _ in refused for d in pending], stop)

    # ---- DICOMweb STOW-RS ---------------------------------------------------------------
    def _send_web(self, dest, items: list[Delivery], stop) -> None:
        from cephnode.node.dicomweb import StowFailure, client_for, stow

        peer = Peer(dest.name, "", dest.url, 0, "", dest.tls)
        where = f"{dest.name} ({dest.url})"
        client = client_for(dest)
        for d in items:
            if stop is not None and stop.is_set():
                break
            ds = self._read_object(d, peer)
            if ds is None:
                continue
            t = time.perf_counter()
            try:
                stow(client, ds, where)
            except StowFailure as exc:
                self._failed(d, peer, str(exc), permanent=exc.permanent)
                if exc.permanent and "credentials" in str(exc):
                    for rest in items[items.index(d) + 1:]:   # the same answer for every object
                        self._failed(rest, peer, str(exc), permanent=True)
                    return
                continue
            except Exception as exc:  # a library error: retried like a network failure
                self._failed(d, peer, f"STOW-RS to {where} failed: {type(exc).__name__}: {exc}")
                continue
            job_state = self.store.delivery_succeeded(d)
            seconds = time.perf_counter() - t
            log.info("delivered", job_id=d.job_id, destination=dest.name, kind=d.kind, sop_uid=d.sop_uid,
                     via="stow-rs", store_ms=round(seconds * 1000, 2))
            if self.metrics is not None:
                self.metrics.delivery(dest.name, "delivered", seconds=seconds, job_state=job_state)

    # ---- one association ----------------------------------------------------------------
    def _send(self, peer: Peer, items: list[Delivery], stop, refused: list | None = None) -> None:
        """Send items over one association. `refused`: when given, an association that cannot
        be made adds (its items, why) there instead of counting a failed attempt for each."""
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
        # every class this peer is configured for, waiting or not: a peer that accepts none of
        # the proposed classes may abort instead of answering, and the one object waiting (an
        # SR sent ahead of the rest) would be retried as if the peer were down
        dest = self._destinations.get(peer.name)
        kinds = dest.kinds if dest is not None else (self.cfg.return_to_sender.kinds if peer.name == "sender" else [])
        for kind in kinds:
            contexts[SOP_CLASSES[OutputKind(kind)]].update({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
        for sop_class, syntaxes_offered in _presentation_contexts(contexts)[:128]:
            ae.add_requested_context(sop_class, syntaxes_offered)
        tls_args = None

        def not_connected(why: str, rejected: bool = False) -> None:
            if refused is not None:        # one of several associations: run_once decides
                refused.append((pending, why, rejected))
                return
            for d in pending:
                self._failed(d, peer, why)

        try:
            if peer.tls.enabled:
                tls_args = (client_ssl_context(peer.tls), peer.tls.server_hostname or peer.host)
            assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
        except Exception as exc:
            return not_connected(f"cannot connect to {where}: {type(exc).__name__}: {exc}")
        if not assoc.is_established:
            if assoc.is_rejected:
                return not_connected(f"{where} rejected the association", rejected=True)
            return not_connected(f"{where} is unreachable or aborted the association")
        try:
            for d in pending:
                if stop is not None and stop.is_set():
                    break
                if not assoc.is_established:
                    self._failed(d, peer, f"{where}: association lost")
                    continue
                if _accepted_as_is(assoc, d.sop_class, syntaxes[d.id]):
                    self._store_one(assoc, d, Path(d.path), peer, where)
                    continue
                ds = self._read_object(d, peer)
                if ds is not None:
                    self._store_one(assoc, d, ds, peer, where)
        finally:
            if assoc.is_established:
                assoc.release()

    def _store_one(self, assoc, d: Delivery, ds, peer: Peer, where: str) -> None:
        """ds: the decoded object, or the path of a file the peer takes as it is."""
        t = time.perf_counter()
        name = UID(d.sop_class).name
        if not isinstance(ds, Path):
            ds = _as_peer_accepts(assoc, ds, d.sop_class)
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
            job_state = self.store.delivery_succeeded(d)
            seconds = time.perf_counter() - t
            log.info("delivered", job_id=d.job_id, destination=peer.name, kind=d.kind, sop_uid=d.sop_uid,
                     status=f"0x{code:04X}", store_ms=round(seconds * 1000, 2))
            if self.metrics is not None:
                self.metrics.delivery(peer.name, "delivered", seconds=seconds, job_state=job_state)
        elif code == SOP_CLASS_NOT_SUPPORTED:
            self._failed(d, peer, f"{where} rejected SOP class {name} ({d.sop_class}): status 0x0122",
                         permanent=True)
        else:
            comment = str(status.get("ErrorComment", "")) if hasattr(status, "get") else ""
            self._failed(d, peer, f"{where} answered C-STORE status 0x{code:04X} {comment}".strip())

    def _read_object(self, d: Delivery, peer: Peer):
        """The object to send, or None when its file cannot be read (parked: no retry mends it)."""
        try:
            return pydicom.dcmread(d.path)
        except Exception as exc:
            self._failed(d, peer, f"object file unreadable: {exc}", permanent=True)
            return None

    def _failed(self, d: Delivery, peer: Peer, error: str, *, permanent: bool = False) -> None:
        attempts = d.attempts + 1
        last = permanent or attempts >= self.cfg.retry.max_attempts
        retry_in = None if last else self.cfg.retry.delay_after(attempts)
        job_state = self.store.delivery_failed(d, error, retry_in_s=retry_in)
        if self.metrics is not None:
            self.metrics.delivery(peer.name, "parked" if last else "retry", job_state=job_state)
        fields = dict(job_id=d.job_id, destination=peer.name, kind=d.kind, sop_uid=d.sop_uid, attempt=attempts,
                      error=error)
        if last:
            log.error("delivery_parked", **fields, job_state=job_state,
                      detail="permanent refusal" if permanent else "last retry failed")
        else:
            log.warning("delivery_retry_scheduled", **fields, retry_in_s=round(retry_in, 2))


def _peer_key(peer: Peer) -> tuple:
    """One destination address: its deliveries share associations and a learned limit."""
    return peer.name, peer.ae_title, peer.host, peer.port


_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _presentation_contexts(wanted: dict[str, set[str]]) -> list[tuple[str, list[str]]]:
    """(SOP class, transfer syntaxes) to propose: each compressed syntax an object is stored
    in (the tracing sheet's JPEG baseline) in a context of its own, then Explicit and Implicit
    VR Little Endian together. A peer picks one syntax per context, and Orthanc picks the
    uncompressed one from a context that also offers JPEG: the sheet was then decompressed here
    and archived as 12.7 MB of raw RGB instead of its 1.6 MB JPEG (issue 14)."""
    out: list[tuple[str, list[str]]] = []
    for sop_class, offered in wanted.items():
        out += [(sop_class, [ts]) for ts in sorted(offered) if ts not in _UNCOMPRESSED]
        out.append((sop_class, list(_UNCOMPRESSED)))
    return out


def _shares(items: list[Delivery], n: int) -> list[list[Delivery]]:
    """The items dealt out over at most n associations, each keeping the claim's order (the
    oldest first), none empty."""
    n = max(1, min(n, len(items)))
    return [items[i::n] for i in range(n)]


def _run_together(tasks: list[tuple], stop) -> None:
    """Run each (send, peer, items) on a thread of its own and wait for all; one task runs
    here. A send commits each object's outcome itself; an error that escapes one is raised
    once all have ended, as it would have been from a single send."""
    tasks = [t for t in tasks if t[2]]
    if len(tasks) <= 1:
        for send, peer, items in tasks:
            if stop is None or not stop.is_set():
                send(peer, items, stop)
        return
    errors: list[BaseException] = []

    def run(send, peer, items) -> None:
        try:
            send(peer, items, stop)
        except BaseException as exc:   # raised below, in the delivery loop's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=t, name="cephnode-send", daemon=True) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _accepted_as_is(assoc, sop_class: str, transfer_syntax: str) -> bool:
    return any(cx.abstract_syntax == sop_class and str(cx.transfer_syntax[0]) == transfer_syntax
               for cx in assoc.accepted_contexts)


def _as_peer_accepts(assoc, ds, sop_class: str):
    """The object in a transfer syntax the peer accepted: a compressed one (the tracing sheet is
    JPEG baseline) goes uncompressed to an archive that took only the uncompressed offer. Same
    SOP Instance UID: the uncompressed pixels are exactly what the JPEG decodes to, and the sheet
    keeps saying it was lossy compressed (Lossy Image Compression 01, its ratio and method)."""
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if not ts.is_compressed:
        return ds
    accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class}
    if str(ts) in accepted or not accepted:
        return ds   # as it is; with nothing accepted, send_c_store says which class was refused
    ds.decompress(generate_instance_uid=False)
    return ds
