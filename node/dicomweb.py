"""STOW-RS delivery to a DICOMweb destination (dicomweb-client over requests).

One POST per object, so each object's outcome is committed on its own exactly like a C-STORE;
the retries, backoff, parking and `cephnode retry` are the delivery loop's (dicomweb-client's
own retrying is turned off so the two do not stack). Outcomes:
  success                    2xx without a Failed SOP Sequence entry for the object
  permanent (parked at once) 401/403 (credentials), 400/404/405/413/415 (wrong URL or refused
                             object), 409 with a failure reason for the object
  temporary (retried)        connection errors, timeouts, 408/429/5xx
"""
from __future__ import annotations

from dataclasses import dataclass

import requests
import requests.adapters
from pydicom.dataset import Dataset

from cephnode.config.schema import Destination

PERMANENT_HTTP = {400, 401, 403, 404, 405, 409, 410, 413, 415}
FAILED_SOP_SEQUENCE = 0x00081198
FAILURE_REASON = 0x00081197


@dataclass
class StowFailure(Exception):
    message: str
    permanent: bool

    def __str__(self) -> str:
        return self.message


def session_for(dest: Destination) -> requests.Session:
    s = requests.Session()
    if dest.auth == "basic":
        s.auth = (dest.username or "", dest.password.get_secret_value() if dest.password else "")
    elif dest.auth == "bearer":
        s.headers["Authorization"] = f"Bearer {dest.token.get_secret_value() if dest.token else ''}"
    tls = dest.tls
    if not tls.verify or tls.ca_file is not None:
        # Not session.verify: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the
        # environment override it, so the configured CA would silently not be used.
        s.mount("https://", _PinnedVerify(False if not tls.verify else str(tls.ca_file)))
    if tls.cert_file is not None:
        s.cert = (str(tls.cert_file), str(tls.key_file)) if tls.key_file else str(tls.cert_file)
    return s


class _PinnedVerify(requests.adapters.HTTPAdapter):
    """Certificate verification as configured for this destination, whatever the environment says."""

    def __init__(self, verify: bool | str):
        self._verify = verify
        super().__init__()

    def send(self, request, **kwargs):
        kwargs["verify"] = self._verify
        return super().send(request, **kwargs)


def client_for(dest: Destination):
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=dest.url.rstrip("/"), session=session_for(dest), timeout=dest.timeout_s)
    client.set_http_retry_params(retry=False)
    return client


def stow(client, ds: Dataset, where: str) -> None:
    """Store one object; raises StowFailure saying why and whether a retry can help."""
    try:
        response = client.store_instances(datasets=[ds])
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (401, 403):
            raise StowFailure(f"{where} refused the credentials (HTTP {code}): check the destination's auth, "
                              f"username/password or token, then `cephnode retry`", permanent=True) from None
        detail = _reason(exc.response)
        raise StowFailure(f"{where} answered HTTP {code}{': ' + detail if detail else ''}",
                          permanent=code in PERMANENT_HTTP) from None
    except requests.exceptions.SSLError as exc:
        raise StowFailure(f"TLS with {where} failed: {exc}", permanent=False) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise StowFailure(f"cannot reach {where}: {type(exc).__name__}", permanent=False) from None
    failed = response.get(FAILED_SOP_SEQUENCE) if isinstance(response, Dataset) else None
    if failed is not None and failed.value:
        reason = failed.value[0].get(FAILURE_REASON)
        code = f"0x{int(reason.value):04X}" if reason is not None else "unknown"
        raise StowFailure(f"{where} refused the object (failure reason {code})", permanent=True)


def _reason(response) -> str:
    if response is None:
        return ""
    text = (response.text or "").strip().replace("\n", " ")
    return text[:200]
