"""DICOMweb (STOW-RS) destinations against a real Orthanc with its DICOMweb plugin (Debian
orthanc-dicomweb) and HTTP basic auth, started by the test: the objects arrive, a node killed
while it retries an unreachable archive loses nothing and doubles nothing, and a 401 is parked
at once with a clear reason, then `cephnode retry` sends it once the password is right."""
from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from cephnode.dicom_io.uids import derived_uid
from cephnode.inference.pack import load_pack
from tests.support import dicomgen
from tests.support.dcmtk import storescu
from tests.support.nodeproc import make_node
from tests.support.orthanc import free_port, start_orthanc

pytestmark = pytest.mark.slow

KINDS = ["sr", "seg", "gsps"]
USERS = {"cephnode": "right-password"}


def _web_destination(http_port: int) -> dict:
    return {"name": "web", "type": "dicomweb", "url": f"http://127.0.0.1:{http_port}/dicom-web", "auth": "basic",
            "username": "cephnode", "kinds": KINDS, "timeout_s": 20}


def _send(tmp_path, node, img, n: int) -> list[str]:
    study = generate_uid()
    sources = [dicomgen.make_dx(img, study_uid=study) for _ in range(n)]
    files = [dicomgen.save(ds, tmp_path / "send" / f"{ds.SOPInstanceUID}.dcm") for ds in sources]
    sent = storescu(files, node.port, called_ae="CEPHNODE")
    assert sent.returncode == 0, sent.stderr
    return [str(ds.SOPInstanceUID) for ds in sources]


def test_stow_survives_a_restart_mid_retry_and_delivers_everything_once(tmp_path, pack):
    img = dicomgen.isbi_image("151", scale=0.3)
    http_port = free_port()                       # the archive is not up yet
    node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.5,
                     destinations=[_web_destination(http_port)],
                     retry={"max_attempts": 60, "initial_delay_s": 0.3, "factor": 1.0, "max_delay_s": 0.5})
    node.env = {"CEPHNODE__DESTINATIONS__WEB__PASSWORD": USERS["cephnode"]}   # the secret from the environment
    with node:
        node.start()
        sops = _send(tmp_path, node, img, 2)
        node.wait_for(lambda s: s["destinations"].get("web", {}).get("pending") == 6
                      and (s["destinations"]["web"]["max_attempts_so_far"] or 0) >= 2,
                      what="STOW-RS retried while the archive is down")
        status = node.status()
        assert "cannot reach web" in status["destinations"]["web"]["last_error"]
        node.kill9()                               # mid-retry
        with start_orthanc(tmp_path / "pacs", http_port=http_port, dicomweb=True,
                           extra_config={"AuthenticationEnabled": True, "RegisteredUsers": USERS}) as pacs:
            node.start()
            status = node.wait_for(lambda s: s["jobs"].get("done") == 2 and s["queue_depth"] == 0,
                                   what="every object stored after the restart")
            assert status["deliveries"] == {"done": 6}
            version = load_pack(pack).version
            in_pacs = pacs.instances_by_sop_uid()
            expected = {str(derived_uid(sop, version, kind)) for sop in sops for kind in KINDS}
            assert set(in_pacs) == expected               # all arrived, nothing else, nothing doubled
            sr = pacs.dataset(in_pacs[str(derived_uid(sops[0], version, "sr"))])
            assert sr.Modality == "SR" and str(sr.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.33"
            assert any(e.get("event") == "delivered" and e.get("via") == "stow-rs" for e in node.log_events())


def test_a_401_is_parked_with_a_clear_reason_and_retry_sends_it(tmp_path, pack):
    img = dicomgen.isbi_image("151", scale=0.3)
    with start_orthanc(tmp_path / "pacs", dicomweb=True,
                       extra_config={"AuthenticationEnabled": True, "RegisteredUsers": USERS}) as pacs:
        node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.5,
                         destinations=[_web_destination(pacs.http_port)],
                         retry={"max_attempts": 10, "initial_delay_s": 0.3, "factor": 1.0, "max_delay_s": 0.5})
        node.env = {"CEPHNODE__DESTINATIONS__WEB__PASSWORD": "wrong-password"}
        with node:
            node.start()
            sops = _send(tmp_path, node, img, 1)
            status = node.wait_for(lambda s: s["jobs"].get("failed") == 1, what="the job parked")
            web = status["destinations"]["web"]
            assert (web["failed"], web["pending"], web["done"]) == (3, 0, 0)
            error = status["failed_jobs"][0]["error"]
            assert "refused the credentials (HTTP 401)" in error and "cephnode retry" in error, error
            from cephnode.node.jobstore import JobStore

            assert all(d["attempts"] == 1 for d in JobStore(node.db_path).deliveries())   # parked at once
            assert pacs.instances() == []
            assert "wrong-password" not in node.log_text()
            node.terminate()
            node.env = {"CEPHNODE__DESTINATIONS__WEB__PASSWORD": USERS["cephnode"]}   # the admin fixes it
            node.start()
            res = node.cli("retry", "--failed")
            assert res.returncode == 0, res.stderr
            node.wait_for(lambda s: s["jobs"].get("done") == 1, what="delivered after cephnode retry")
            version = load_pack(pack).version
            assert set(pacs.instances_by_sop_uid()) == {str(derived_uid(sops[0], version, k)) for k in KINDS}


def test_stow_over_https_verifies_the_archive_certificate(tmp_path, pack):
    from tests.support.tlsrelay import TlsRelay
    from tests.test_node_tls import _make_certs

    certs = _make_certs(tmp_path / "certs")
    img = dicomgen.isbi_image("151", scale=0.3)
    with start_orthanc(tmp_path / "pacs", dicomweb=True) as pacs, \
            TlsRelay(pacs.http_port, certs / "server.crt", certs / "server.key") as tls:
        pacs_url = f"https://127.0.0.1:{tls.port}/dicom-web"
        good = {"name": "web", "type": "dicomweb", "url": pacs_url, "kinds": ["sr"], "tls": {"ca_file": str(certs / "ca.crt")}}
        untrusted = {"name": "untrusted", "type": "dicomweb", "url": pacs_url, "kinds": ["sr"]}   # system CAs only
        node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.5,
                         destinations=[good, untrusted],
                         retry={"max_attempts": 2, "initial_delay_s": 0.2, "factor": 1.0, "max_delay_s": 0.2})
        with node:
            node.start()
            sops = _send(tmp_path, node, img, 1)
            status = node.wait_for(lambda s: s["queue_depth"] == 0 and s["jobs"].get("failed") == 1,
                                   what="delivered to 'web', parked on 'untrusted'")
            assert status["destinations"]["web"]["done"] == 1
            assert "TLS" in status["destinations"]["untrusted"]["last_error"]
            assert tls.handshake_failures >= 2                    # the untrusted attempts never got through
            sop_uids = pacs.instances_by_sop_uid()
            assert set(sop_uids) == {str(derived_uid(sops[0], load_pack(pack).version, "sr"))}


BEARER_LUA = """
-- the archive takes STOW-RS only with the right bearer token (reads stay open for the test)
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if method == 'POST' and string.find(uri, '/dicom-web/', 1, true) == 1 then
    return httpHeaders['authorization'] == 'Bearer %s'
  end
  return true
end
"""


def test_stow_with_a_bearer_token(tmp_path, pack):
    """Orthanc itself checks the token (a Lua request filter), so only a request carrying
    'Authorization: Bearer <token>' can store."""
    import urllib.error
    import urllib.request

    token = "t0ken-" + generate_uid()[-12:]
    img = dicomgen.isbi_image("151", scale=0.3)
    with start_orthanc(tmp_path / "pacs", dicomweb=True, lua=BEARER_LUA % token) as pacs:
        stow = f"http://127.0.0.1:{pacs.http_port}/dicom-web/studies"
        anonymous = urllib.request.Request(stow, data=b"", method="POST",
                                           headers={"Content-Type": "multipart/related; type=\"application/dicom\""})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(anonymous, timeout=20)
        assert refused.value.code in (401, 403)          # the archive really wants the token
        dest = {"name": "web", "type": "dicomweb", "url": stow.rsplit("/studies", 1)[0], "auth": "bearer",
                "kinds": KINDS, "timeout_s": 20}
        node = make_node(tmp_path / "node", port=free_port(), pack=pack, quiet_period_s=0.5, destinations=[dest])
        node.env = {"CEPHNODE__DESTINATIONS__WEB__TOKEN": token}       # the secret from the environment
        with node:
            node.start()
            sops = _send(tmp_path, node, img, 1)
            status = node.wait_for(lambda s: s["jobs"].get("done") == 1, what="stored with the bearer token")
            assert status["deliveries"] == {"done": len(KINDS)}
            version = load_pack(pack).version
            assert set(pacs.instances_by_sop_uid()) == {str(derived_uid(sops[0], version, k)) for k in KINDS}
