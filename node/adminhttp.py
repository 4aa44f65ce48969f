"""The admin HTTP endpoint (`[http]`): /metrics, /healthz, /readyz and the status page.

Plain standard-library HTTP server in a daemon thread: it only serves a few small read-only
pages to Prometheus and admins. On a network address it needs a token or TLS (the
configuration refuses otherwise); /healthz never needs the token, so a supervisor or load
balancer can probe it, and it says nothing but "ok".
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from cephnode.node.logs import get_logger

if TYPE_CHECKING:
    from cephnode.node.service import NodeService

log = get_logger("cephnode.http")

_THUMB = re.compile(r"^/jobs/(\d+)/thumbnail\.png$")


class AdminHttp:
    def __init__(self, service: "NodeService"):
        self.service = service
        self.cfg = service.cfg.http
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.cfg.port

    def start(self) -> "AdminHttp":
        handler = type("Handler", (_Handler,), {"admin": self})
        server = ThreadingHTTPServer((self.cfg.bind_address, self.cfg.port), handler)
        server.daemon_threads = True
        if self.cfg.tls.enabled:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            pw = self.cfg.tls.key_password.get_secret_value() if self.cfg.tls.key_password else None
            ctx.load_cert_chain(str(self.cfg.tls.cert_file), str(self.cfg.tls.key_file), password=pw)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="cephnode-http", daemon=True)
        self._thread.start()
        log.info("http_listening", address=self.cfg.bind_address, port=self.port, tls=self.cfg.tls.enabled,
                 token=self.cfg.token is not None)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def authorised(self, header: str | None) -> bool:
        """`Authorization: Bearer <token>` (Prometheus' bearer_token), or HTTP Basic with the
        token as password (what a browser prompts for, and sends again for the thumbnails)."""
        if self.cfg.token is None:
            return True
        token = self.cfg.token.get_secret_value().encode()
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), token)
        if scheme.lower() == "basic":
            try:
                _, _, password = base64.b64decode(value.strip(), validate=True).partition(b":")
            except (ValueError, binascii.Error):
                return False
            return hmac.compare_digest(password, token)
        return False


class _Handler(BaseHTTPRequestHandler):
    admin: AdminHttp
    server_version = "cephnode"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass   # scrapes every few seconds would flood the node's log

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        path = urlsplit(self.path).path
        try:
            if path == "/healthz":
                return self._send(200, b"ok\n", "text/plain; charset=utf-8")
            if not self.admin.authorised(self.headers.get("Authorization")):
                return self._send(401, b"unauthorised\n", "text/plain; charset=utf-8",
                                  {"WWW-Authenticate": 'Basic realm="cephnode", charset="UTF-8"'})
            service = self.admin.service
            if path == "/readyz":
                ready = service.readiness()
                return self._send(200 if ready["ready"] else 503, json.dumps(ready, indent=1).encode() + b"\n",
                                  "application/json")
            if path == "/metrics":
                if service.metrics is None:
                    return self._send(503, b"starting\n", "text/plain; charset=utf-8")
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                return self._send(200, encoder(service.metrics.registry), content_type)
            if path in ("/", "/status"):
                from cephnode.node.statuspage import render_status

                return self._send(200, render_status(service).encode("utf-8"), "text/html; charset=utf-8")
            m = _THUMB.match(path)
            if m:
                from cephnode.node.statuspage import thumbnail_png

                png = thumbnail_png(service, int(m.group(1)))
                if png is None:
                    return self._send(404, b"no tracing for this job\n", "text/plain; charset=utf-8")
                return self._send(200, png, "image/png", {"Cache-Control": "max-age=300"})
            return self._send(404, b"not found\n", "text/plain; charset=utf-8")
        except Exception as exc:   # a page must never take the node down
            log.exception("http_error", path=path, error=f"{type(exc).__name__}: {exc}")
            return self._send(500, b"internal error\n", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
