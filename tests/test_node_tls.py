"""DICOM TLS on the node's port, with a client-certificate requirement; certificates made
by the openssl command line for the test."""
from __future__ import annotations

import subprocess

import pytest

from tests.support.hostile import closed_by_peer, stall
from tests.support.nodeproc import make_node, test_model_pack
from tests.support.orthanc import free_port

pytestmark = pytest.mark.slow


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=cephnode test CA", cwd=folder)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return folder


def test_tls_with_required_client_certificate(tmp_path):
    certs = _make_certs(tmp_path / "certs")
    pack = test_model_pack(tmp_path / "pack")
    port = free_port()
    tls_dest = {"enabled": True, "ca_file": str(certs / "ca.crt"), "cert_file": str(certs / "client.crt"),
                "key_file": str(certs / "client.key")}
    node = make_node(
        tmp_path / "node", port=port, pack=pack, allowed_callers=[{"ae_title": "MODALITY"}],
        destinations=[
            # the node's own port as a "destination", only to exercise `cephnode echo` over TLS
            {"name": "self-tls", "ae_title": "CEPHNODE", "host": "127.0.0.1", "port": port,
             "calling_ae_title": "MODALITY", "tls": tls_dest},
            {"name": "self-no-cert", "ae_title": "CEPHNODE", "host": "127.0.0.1", "port": port,
             "calling_ae_title": "MODALITY", "tls": {"enabled": True, "ca_file": str(certs / "ca.crt")}},
            {"name": "self-plain", "ae_title": "CEPHNODE", "host": "127.0.0.1", "port": port,
             "calling_ae_title": "MODALITY"},
        ],
        extra={"listen": {"tls": {"enabled": True, "cert_file": str(certs / "server.crt"),
                                  "key_file": str(certs / "server.key"), "ca_file": str(certs / "ca.crt"),
                                  "require_client_cert": True}},
               "limits": {"tls_handshake_timeout_s": 8}})
    with node:
        node.start(wait=False)
        ok = None
        for _ in range(300):  # wait until it listens (plain echoscu cannot tell: TLS only)
            ok = node.cli("echo", "self-tls")
            if ok.returncode == 0 or not node.alive():
                break
        assert ok.returncode == 0 and "OK" in ok.stdout, (ok.stdout, ok.stderr, node.log_tail())
        # Silent TCP clients do not block TLS callers: the handshake runs in each connection's
        # own thread (it used to run in the accept loop, without a timeout).
        silent = stall(port, 3, "silent")
        during = node.cli("echo", "self-tls")
        assert during.returncode == 0 and "OK" in during.stdout, (during.stdout, during.stderr)
        assert not any(closed_by_peer(s) for s in silent), "the silent sockets were still open during the echo"
        assert all(closed_by_peer(s, wait=30) for s in silent), "tls_handshake_timeout_s frees them"
        for s in silent:
            s.close()
        no_cert = node.cli("echo", "self-no-cert")
        assert no_cert.returncode != 0 and "FAILED" in no_cert.stdout, (no_cert.stdout, no_cert.stderr[-500:])
        plain = node.cli("echo", "self-plain")
        assert plain.returncode != 0 and "FAILED" in plain.stdout
        assert node.alive()
