"""The read-only status page (`GET /` on the admin HTTP endpoint): what `cephnode status`
prints, as one server-rendered HTML page with a small thumbnail of each tracing.

No patient names or IDs unless logging.log_phi is on (UIDs are shown: they are how admins
find an instance in the archive). Every value is HTML-escaped; the page has no script.
"""
from __future__ import annotations

import html
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cephnode.dicom_io.spool import safe_name

if TYPE_CHECKING:
    from cephnode.node.service import NodeService

THUMB_WIDTH = 160
RECENT = 20
LEVEL_COLOURS = {"high": (80, 200, 80), "medium": (0, 200, 255), "low": (60, 60, 255)}  # BGR

_cache: "OrderedDict[tuple, bytes]" = OrderedDict()
_cache_lock = threading.Lock()


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _result_path(service: "NodeService", job: dict[str, Any]) -> Path:
    return (Path(service.cfg.storage.outbox).resolve() / safe_name(job["study_uid"]) / safe_name(job["sop_uid"])
            / "result.json")


def _patient(service: "NodeService", sop_uid: str) -> str:
    """Patient name and ID from the spooled header; only ever called with log_phi on."""
    import pydicom

    inst = service.store.instance(sop_uid)
    if not inst or not inst.get("path"):
        return ""
    try:
        ds = pydicom.dcmread(inst["path"], stop_before_pixels=True)
        return f"{ds.get('PatientName', '')} ({ds.get('PatientID', '')})"
    except Exception:
        return ""


def render_status(service: "NodeService") -> str:
    cfg = service.cfg
    store = service.store
    summary = store.summary(recent=RECENT)
    ready = service.readiness()
    info = service.info()
    phi = cfg.logging.log_phi
    listen = cfg.listen
    out: list[str] = []
    w = out.append
    w("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cephnode status</title>")
    w("<meta http-equiv='refresh' content='30'>")
    w("<style>body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
      "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
      "th{background:#f3f3f3}.bad{color:#b00020}.ok{color:#1b7f3b}code{font-size:12px}"
      "img{display:block;background:#000}</style></head><body>")
    w(f"<h1>cephnode <span id='ae'>{_e(listen.ae_title)}</span></h1>")
    port = service.receiver.port if service.receiver is not None else listen.port
    w("<table id='node'>")
    w(f"<tr><th>DICOM listener</th><td id='listener'>{_e(listen.ae_title)} on {_e(listen.bind_address)}:{_e(port)}"
      f"{' (TLS)' if listen.tls.enabled else ''}</td></tr>")
    w(f"<tr><th>model pack</th><td id='pack'>{_e(info.get('pack_name', 'loading'))} "
      f"{_e(info.get('pack_version', ''))}</td></tr>")
    w(f"<tr><th>inference</th><td id='device'>{_e(info.get('device', ''))} {_e(info.get('provider', ''))}</td></tr>")
    state = "<span class='ok'>ready</span>" if ready["ready"] else "<span class='bad'>not ready</span>"
    failing = [k for k, v in ready["checks"].items() if not v]
    w(f"<tr><th>readiness</th><td id='ready'>{state}{': ' + _e(', '.join(failing)) if failing else ''}</td></tr>")
    inst = summary["instances"]
    w(f"<tr><th>queue depth</th><td id='queue-depth'>{summary['queue_depth']}</td></tr>")
    w(f"<tr><th>open studies</th><td id='open-studies'>{summary['open_studies']}</td></tr>")
    w(f"<tr><th>instances</th><td id='instances'>{inst['received']} received, {inst['selected']} selected, "
      f"{inst['skipped']} skipped, {inst['duplicates']} duplicate receipts, {inst['pruned']} pruned</td></tr>")
    jobs = ", ".join(f"{k} {v}" for k, v in sorted(summary["jobs"].items())) or "none"
    w(f"<tr><th>jobs</th><td id='jobs'>{_e(jobs)}</td></tr></table>")

    w("<h2>Destinations</h2><table id='destinations'><tr><th>name</th><th>address</th><th>done</th>"
      "<th>pending</th><th>parked</th><th>next attempt</th><th>last error</th></tr>")
    names = [d.name for d in cfg.destinations] + (["sender"] if cfg.return_to_sender.enabled else [])
    names += [n for n in summary["destinations"] if n not in names]
    for name in names:
        d = summary["destinations"].get(name, {})
        address = next((x.address for x in cfg.destinations if x.name == name), d.get("address", ""))
        err = d.get("last_error") if (d.get("pending") or d.get("failed")) else None
        w(f"<tr data-destination='{_e(name)}'><td>{_e(name)}</td><td>{_e(address)}</td><td>{d.get('done', 0)}</td>"
          f"<td>{d.get('pending', 0)}</td><td>{d.get('failed', 0)}</td>"
          f"<td>{_e(_when(d.get('next_attempt_at')) if d.get('pending') else '-')}</td>"
          f"<td class='{'bad' if err else ''}'>{_e(err or '')}</td></tr>")
    w("</table>")

    w("<h2>Recent jobs</h2><table id='recent-jobs'><tr><th>job</th><th>state</th><th>finished</th>"
      "<th>timings (ms)</th><th>tracing</th><th>SOP Instance UID</th>" + ("<th>patient</th>" if phi else "")
      + "<th>note</th></tr>")
    for j in summary["recent_jobs"]:
        row = store.job(j["id"]) or {}
        try:
            timings = json.loads(row.get("timings") or "{}")
        except ValueError:
            timings = {}
        t_text = ", ".join(f"{k.removesuffix('_ms')} {v:.0f}" for k, v in timings.items()
                           if isinstance(v, (int, float)))
        has_result = _result_path(service, j).is_file()
        thumb = (f"<img src='/jobs/{j['id']}/thumbnail.png' width='{THUMB_WIDTH}' alt='tracing of job {j['id']}'>"
                 if has_result else "")
        w(f"<tr data-job='{j['id']}' data-state='{_e(j['state'])}'><td>#{j['id']}</td><td>{_e(j['state'])}</td>"
          f"<td>{_e(_when(j['finished_at']))}</td><td class='timings'>{_e(t_text)}</td><td>{thumb}</td>"
          f"<td><code>{_e(j['sop_uid'])}</code></td>"
          + (f"<td>{_e(_patient(service, j['sop_uid']))}</td>" if phi else "")
          + f"<td>{_e(j['error'] if j['state'] != 'failed' else '')}</td></tr>")
    w("</table>")

    w("<h2>Failed and parked work</h2><table id='failed'><tr><th>job</th><th>SOP Instance UID</th><th>reason</th></tr>")
    for j in summary["failed_jobs"]:
        w(f"<tr data-job='{j['id']}'><td>#{j['id']}</td><td><code>{_e(j['sop_uid'])}</code></td>"
          f"<td class='bad'>{_e(j['error'])}</td></tr>")
    w("</table><p>Send failed work again with <code>cephnode retry JOB</code> or <code>cephnode retry --failed</code>."
      "</p>")
    w("<table id='parked'><tr><th>delivery</th><th>job</th><th>destination</th><th>kind</th><th>attempts</th>"
      "<th>last error</th></tr>")
    for d in store.parked_deliveries():
        w(f"<tr><td>{d['id']}</td><td>#{d['job_id']}</td><td>{_e(d['destination'])}</td><td>{_e(d['kind'])}</td>"
          f"<td>{d['attempts']}</td><td class='bad'>{_e(d['last_error'])}</td></tr>")
    w(f"</table><p><small>rendered {_e(_when(time.time()))}</small></p></body></html>")
    return "".join(out)


def thumbnail_png(service: "NodeService", job_id: int) -> bytes | None:
    """The source radiograph, small, with the traced landmarks; None when the job has no
    tracing. Cached: the source is decoded once per job and result."""
    import cv2
    import numpy as np

    from cephnode.dicom_io.pixels import read_dicom_image

    job = service.store.job(job_id)
    if job is None:
        return None
    result_path = _result_path(service, job)
    inst = service.store.instance(job["sop_uid"])
    if not result_path.is_file() or not inst or not inst.get("path") or not Path(inst["path"]).is_file():
        return None
    key = (job_id, result_path.stat().st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    result = json.loads(result_path.read_text())
    image = read_dicom_image(inst["path"])
    h, w = image.pixels.shape
    scale = THUMB_WIDTH / w
    grey = cv2.resize((image.pixels * 255).astype(np.uint8), (THUMB_WIDTH, max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)
    canvas = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    for lm in result.get("landmarks", []):
        if lm.get("x") is None or lm.get("y") is None:
            continue
        centre = (int(round(lm["x"] * scale)), int(round(lm["y"] * scale)))
        cv2.circle(canvas, centre, 2, LEVEL_COLOURS.get(lm.get("level"), (255, 255, 255)), -1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        return None
    data = png.tobytes()
    with _cache_lock:
        _cache[key] = data
        while len(_cache) > 256:
            _cache.popitem(last=False)
    return data
