"""Connections that cannot starve the node: pynetdicom's server with bounds on every socket.

pynetdicom's AssociationServer wraps TLS inside its accept loop (one silent TCP client then
blocks every TLS caller) and its DUL reads a PDU with a blocking recv of whatever length the
peer declares (a peer that sends 11 bytes and goes silent holds its association slot for
ever; a peer that declares 4 GB makes the node buffer it). Here:

* the accept loop only accepts; the TLS handshake runs in the connection's own thread under
  limits.tls_handshake_timeout_s;
* every PDU must arrive whole within limits.pdu_timeout_s (a slow-drip peer included);
* a P-DATA-TF PDU longer than the maximum we negotiated (listen.max_pdu_bytes), or any other
  PDU over 1 MiB, closes the connection before a byte of its body is buffered;
* the data set of one C-STORE is counted as it arrives: past limits.max_instance_mb the rest
  of its fragments are dropped (not buffered), and the C-STORE handler answers 0xA700.

Any refusal here closes the transport (pynetdicom turns the OSError into Evt17), which ends
the association's thread and frees its slot.
"""
from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from typing import Any

from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from cephnode.config.schema import LimitsConfig
from cephnode.node.logs import get_logger

log = get_logger("cephnode.transport")

PDATA_TF = 0x04
MAX_OTHER_PDU = 2**20        # A-ASSOCIATE-RQ with every context we support is a few KiB
KNOWN_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
# Free space kept beyond a PDU's own size before its data set fragments are written (the
# queue database and the rename into the spool need a little too).
SPACE_MARGIN = 1 << 20


class PduRefused(OSError):
    """A PDU this node will not read (too long, too slow): the transport is closed."""


class BoundedSocket(AssociationSocket):
    """An AssociationSocket whose reads are bounded in time and size (see module docstring).
    Installed on pynetdicom's own socket object by changing its class, so that pynetdicom's
    connection event (Evt5) is queued exactly once."""

    limits: LimitsConfig
    max_pdata: int

    def _init_bounds(self, limits: LimitsConfig, max_pdata: int, peer: str, first_pdu: bytes = b"",
                     incoming_dir: str | None = None) -> None:
        self.limits = limits
        self.max_pdata = max_pdata
        self.peer = peer
        self._first = first_pdu       # the A-ASSOCIATE-RQ, already read by the handler
        self._body: bytes | None = None
        self._data_bytes = 0          # data set bytes of the C-STORE being received
        self._dropping = False        # over the instance limit, or no room: fragments are dropped
        self._no_space = False        # dropping because the receiving disk is full
        self.oversize_bytes: int | None = None   # set when a data set dropped for its size completes
        self.no_space_bytes: int | None = None   # set when a data set dropped for want of disk completes
        # where pynetdicom writes the fragments (the spool's .incoming): a full disk there
        # would otherwise raise inside the DUL thread and abort the association unanswered
        self.incoming_dir = incoming_dir

    def take_oversize(self) -> int | None:
        """Bytes the last completed data set had when it went over the limit, then reset."""
        value, self.oversize_bytes = self.oversize_bytes, None
        return value

    def take_no_space(self) -> int | None:
        """Bytes the last completed data set had when the disk had no room for it, then reset."""
        value, self.no_space_bytes = self.no_space_bytes, None
        return value

    def _room_for(self, nbytes: int) -> bool:
        if self.incoming_dir is None:
            return True
        try:
            st = os.statvfs(self.incoming_dir)
        except OSError:
            return True               # cannot tell: let the write itself decide
        return st.f_bavail * st.f_frsize >= nbytes + SPACE_MARGIN

    @property
    def ready(self) -> bool:
        if self._first or self._body is not None:
            return True
        return super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        if self._first:                  # the request read before the association existed
            header, self._body, self._first = self._first[:6], self._first[6:], b""
            return bytearray(header)
        if self._body is not None:       # the DUL's second read: the body we already have
            body, self._body = self._body, None
            if len(body) != nr_bytes:
                raise PduRefused("PDU length out of step")
            return bytearray(body)
        if nr_bytes != 6:
            return self._read(nr_bytes, time.monotonic() + self.limits.pdu_timeout_s)
        deadline = time.monotonic() + self.limits.pdu_timeout_s
        header = self._read(6, deadline)
        if len(header) < 6:
            return header                # closed: pynetdicom handles it
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in KNOWN_PDU_TYPES:
            return header                # pynetdicom answers an unknown PDU type itself
        limit = self.max_pdata if pdu_type == PDATA_TF else MAX_OTHER_PDU
        if length > limit:
            self._refuse(f"PDU type 0x{pdu_type:02x} of {length} bytes exceeds the limit of {limit}")
        body = bytes(self._read(length, deadline))
        if len(body) != length:
            self._body = body            # short: pynetdicom sees the truncation and closes
            return header
        if pdu_type == PDATA_TF:
            body = self._account(body)
            header = struct.pack(">BBL", pdu_type, 0, len(body))
        self._body = body
        return header

    def _read(self, n: int, deadline: float) -> bytearray:
        buf = bytearray()
        sock = self.socket
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                self._refuse(f"PDU not received within {self.limits.pdu_timeout_s:g} s "
                             f"({len(buf)} of {n} bytes)")
            sock.settimeout(left)
            try:
                chunk = sock.recv(min(65536, n - len(buf)))
            except (socket.timeout, TimeoutError):
                self._refuse(f"PDU not received within {self.limits.pdu_timeout_s:g} s "
                             f"({len(buf)} of {n} bytes)")
            if not chunk:
                break
            buf.extend(chunk)
        return buf

    def _account(self, body: bytes) -> bytes:
        """Count the data set fragments of a P-DATA-TF body; past the instance limit, return
        the body with those fragments emptied (the PDV items stay, so the DIMSE layer still
        sees where the message ends)."""
        cap = self.limits.max_instance_mb * 2**20
        out: list[bytes] = []
        changed = False
        room = None                   # checked once per PDU, when it carries data set bytes
        i = 0
        while i + 6 <= len(body):
            (item_len,) = struct.unpack(">L", body[i:i + 4])
            if item_len < 2 or i + 4 + item_len > len(body):
                return body              # malformed: pynetdicom's decoder refuses it
            pcid, ctrl = body[i + 4], body[i + 5]
            fragment_len = item_len - 2
            if not ctrl & 0x01:          # a data set fragment (bit 0 clear)
                self._data_bytes += fragment_len
                if not self._dropping:
                    room = self._room_for(len(body)) if room is None else room
                    if not room:
                        self._dropping = self._no_space = True
                        log.warning("instance_no_space", peer_host=self.peer,
                                    detail="the spool's disk is full; the C-STORE gets 0xA700")
                if self._data_bytes > cap or self._dropping:
                    if not self._dropping:
                        self._dropping = True
                        log.warning("instance_too_large", peer_host=self.peer, limit_mb=self.limits.max_instance_mb,
                                    detail="data set fragments past the limit are dropped; the C-STORE gets 0xA700")
                    out.append(struct.pack(">LBB", 2, pcid, ctrl))
                    changed = True
                else:
                    out.append(body[i:i + 4 + item_len])
                if ctrl & 0x02:          # last fragment: the data set is complete
                    if self._no_space:
                        self.no_space_bytes = self._data_bytes
                    elif self._dropping:
                        self.oversize_bytes = self._data_bytes
                    self._data_bytes, self._dropping, self._no_space = 0, False, False
            else:
                out.append(body[i:i + 4 + item_len])
            i += 4 + item_len
        return b"".join(out) if changed else body

    def _refuse(self, why: str) -> None:
        log.warning("connection_refused", peer_host=self.peer, reason=why)
        raise PduRefused(why)


class BoundedRequestHandler(RequestHandler):
    server: "BoundedServer"

    def handle(self) -> None:
        limits = self.server.limits
        sock: Any = self.request
        peer = str(self.client_address[0])
        if self.server.tls_context is not None:
            try:
                sock.settimeout(limits.tls_handshake_timeout_s)
                sock = self.server.tls_context.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("tls_handshake_failed", peer_host=peer,
                            reason=f"{type(exc).__name__}: {str(exc)[:200]}")
                try:
                    sock.close()
                except OSError:
                    pass
                return
            self.request = sock
        # The A-ASSOCIATE-RQ is read here, before pynetdicom creates the association: a
        # connection that stalls before its request never occupies an association slot
        # (pynetdicom counts every acceptor thread against max_associations).
        self._first_pdu = _read_request(sock, limits.request_timeout_s, peer)
        if self._first_pdu is None:
            try:
                sock.close()
            except OSError:
                pass
            return
        sock.settimeout(limits.pdu_timeout_s)
        super().handle()

    def _create_association(self):
        assoc = super()._create_association()
        sock = assoc.dul.socket
        sock.__class__ = BoundedSocket
        sock._init_bounds(self.server.limits, int(self.ae.maximum_pdu_size or 2**32 - 1),
                          str(self.client_address[0]), getattr(self, "_first_pdu", b""),
                          incoming_dir=getattr(self.server, "incoming_dir", None))
        return assoc


def _read_request(sock: Any, timeout_s: float, peer: str) -> bytes | None:
    """The first PDU, whole, within timeout_s; None (logged) when it is not an
    A-ASSOCIATE-RQ of a sane size or does not arrive in time."""
    deadline = time.monotonic() + timeout_s
    buf = bytearray()
    need = 6
    while len(buf) < need:
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("connection_refused", peer_host=peer,
                        reason=f"no complete A-ASSOCIATE-RQ within {timeout_s:g} s ({len(buf)} bytes)")
            return None
        try:
            sock.settimeout(left)
            chunk = sock.recv(min(65536, need - len(buf)))
        except (socket.timeout, TimeoutError):
            continue
        except OSError:
            return None
        if not chunk:
            return None
        buf.extend(chunk)
        if need == 6 and len(buf) >= 6:
            pdu_type, _, length = struct.unpack(">BBL", bytes(buf[:6]))
            if pdu_type != 0x01 or length > MAX_OTHER_PDU:
                log.warning("connection_refused", peer_host=peer,
                            reason=f"first PDU is type 0x{pdu_type:02x} of {length} bytes, not an A-ASSOCIATE-RQ")
                return None
            need = 6 + length
    return bytes(buf)


class BoundedServer(ThreadedAssociationServer):
    """Accepts only; TLS and every read happen in the connection's thread, bounded."""

    limits: LimitsConfig
    tls_context: ssl.SSLContext | None = None
    incoming_dir: str | None = None

    def get_request(self):
        return self.socket.accept()   # no handshake here: the accept loop never waits on a peer

    def handle_error(self, request, client_address) -> None:
        log.warning("connection_error", peer_host=str(client_address[0]))


def start_server(ae, address: tuple[str, int], *, limits: LimitsConfig, tls_context: ssl.SSLContext | None,
                 evt_handlers: list, incoming_dir: str | None = None) -> BoundedServer:
    """ae.start_server(block=False), with BoundedServer and BoundedRequestHandler."""
    import threading

    server = ae.make_server(address, evt_handlers=evt_handlers, server_class=BoundedServer,
                            request_handler=BoundedRequestHandler)
    server.limits = limits
    server.tls_context = tls_context
    server.incoming_dir = incoming_dir
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="cephnode-acceptor", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
