"""OHIF v3 over Orthanc's DICOMweb plugin, for the browser test (tests/test_viewer_ohif.py).

What `./dev test` installs (setup_viewer): Debian's chromium, orthanc-dicomweb and nodejs/npm;
into VIEWER_CACHE, puppeteer-core (tests/viewer/package.json, no browser download) and the
production build of OHIF from the npm package @ohif/app. The server here serves that build
with SPA fallback and our own app-config.js, and proxies /dicom-web to Orthanc, so that the
browser sees one origin on 127.0.0.1 and nothing else.
"""
from __future__ import annotations

import http.client
import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OHIF_VERSION = "3.13.2"
VIEWER_CACHE = Path(os.environ.get("CEPHNODE_VIEWER_CACHE")
                    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cephnode-viewer")
OHIF_DIST = VIEWER_CACHE / f"ohif-app-{OHIF_VERSION}" / "dist"
NODE_MODULES = VIEWER_CACHE / "node_modules"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DRIVER = Path(__file__).resolve().parent.parent / "viewer" / "ohif_check.mjs"

# One DICOMweb data source, same origin. Lazy study loading and no thumbnails-by-rendered-frame
# keep Orthanc's work small; the investigational-use dialog would cover the viewport.
APP_CONFIG = """window.config = {
  routerBasename: '/', extensions: [], modes: [], showStudyList: true, maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false, showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' }, showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'orthanc',
    configuration: {
      friendlyName: 'cephnode test Orthanc', name: 'orthanc',
      wadoUriRoot: '/wado', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, supportsReject: false, imageRendering: 'wadors',
      thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false,
      supportsWildcard: true, dicomUploadEnabled: false, bulkDataURI: { enabled: true },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""

_TYPES = {".js": "application/javascript", ".mjs": "application/javascript", ".css": "text/css",
          ".html": "text/html", ".json": "application/json", ".wasm": "application/wasm",
          ".svg": "image/svg+xml", ".png": "image/png", ".woff2": "font/woff2", ".ico": "image/x-icon"}


def missing_parts() -> list[str]:
    """What setup_viewer in ./dev should have installed and did not."""
    parts = {"chromium": CHROMIUM, "orthanc-dicomweb": DICOMWEB_PLUGIN, "OHIF build": OHIF_DIST / "index.html",
             "puppeteer-core": NODE_MODULES / "puppeteer-core" / "package.json"}
    return [f"{name} ({path})" for name, path in parts.items() if not path.exists()]


def orthanc_dicomweb_config() -> dict:
    return {"Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                         "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"}}


def _handler(orthanc_port: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:   # quiet: pytest shows failures, not every GET
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith(("/dicom-web", "/wado")):
                return self._proxy()
            if path == "/app-config.js":
                return self._send(200, APP_CONFIG.encode(), "application/javascript")
            file = (OHIF_DIST / path.lstrip("/")).resolve()
            if not file.is_file() or OHIF_DIST.resolve() not in file.parents:
                file = OHIF_DIST / "index.html"   # client-side routes such as /viewer
            self._send(200, file.read_bytes(), _TYPES.get(file.suffix, "application/octet-stream"))

        def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _proxy(self) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
            conn.request("GET", self.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            self._send(resp.status, body, resp.getheader("Content-Type", "application/octet-stream"))

    return Handler


@contextmanager
def serve_ohif(orthanc_port: int) -> Iterator[str]:
    """OHIF on a free loopback port, proxying DICOMweb to Orthanc; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(orthanc_port))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
