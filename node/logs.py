"""structlog set-up: one JSON object per line on stderr, with UIDs and timings.

Patient names and IDs are dropped from every event unless the admin sets logging.log_phi.
Everything else that reaches the log is made safe here too:

* the standard library's log records (pynetdicom, highdicom, onnxruntime) and Python
  warnings are routed into structlog, so every line is one JSON object;
* every string field is length-capped and its control characters escaped, so a hostile UID
  with a newline cannot forge a line and a 1 MB value cannot make a 1 MB line;
* library texts (warnings, exception messages) go through sanitize_error: quoted values and
  dates are replaced, so a warning that quotes a patient's name or birth date does not leak it.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
import warnings
from typing import Any

import structlog

PHI_KEYS = frozenset({"patient_name", "patient_id", "patient_birth_date", "other_patient_ids", "accession_number"})
MAX_FIELD_CHARS = 512       # per string field; UIDs are at most 64
MAX_EVENT_FIELDS_CHARS = 8192
_state = {"log_phi": False}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Quoted text in library messages is almost always an element value; UIDs, tags and
# keywords inside quotes are kept (they identify no one and help the admin).
_QUOTED = re.compile(r"""(?P<q>['"])(?P<v>[^'"\n]{0,2000}?)(?P=q)""")
_SAFE_QUOTED = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)*|\(?[0-9A-Fa-f]{4},\s?[0-9A-Fa-f]{4}\)?|[A-Z][A-Za-z0-9]{1,63}|[A-Z]{2}|)$")
_DATE = re.compile(r"(?<![0-9.])(?:1[89]|2[0-9])[0-9]{2}-?[01][0-9]-?[0-3][0-9](?![0-9.])")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        text)


def cap(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    text = escape_controls(text)
    if len(text) > limit:
        return text[:limit] + f"...[{len(text) - limit} more chars]"
    return text


def sanitize_error(text: str, limit: int = 1000) -> str:
    """A library's message made safe to log and store: quoted values (other than UIDs, tags,
    keywords) and dates replaced, control characters escaped, length capped."""
    def quoted(m: re.Match) -> str:
        v = m.group("v")
        return m.group(0) if _SAFE_QUOTED.match(v) else f"{m.group('q')}<value>{m.group('q')}"

    text = _QUOTED.sub(quoted, str(text))
    text = _DATE.sub("<date>", text)
    return cap(text, limit)


def sanitize_traceback(exc: BaseException, limit: int = 4000) -> str:
    """File and line of each frame plus the sanitised message: where it broke, without the
    values it broke on (format_exc_info would print the raw exception text)."""
    frames = traceback.extract_tb(exc.__traceback__)[-12:]
    where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in reversed(frames))
    return cap(f"{type(exc).__name__}: {sanitize_error(str(exc), 500)} at {where}", limit)


def _drop_phi(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if not _state["log_phi"]:
        for key in PHI_KEYS.intersection(event):
            del event[key]
    return event


def _safe_exc_info(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """log.exception(): a sanitised traceback instead of the raw one."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if exc is not None:
            event["exception"] = sanitize_traceback(exc)
    return event


def _cap_fields(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    budget = MAX_EVENT_FIELDS_CHARS
    for key, value in list(event.items()):
        if isinstance(value, str):
            value = cap(value, min(MAX_FIELD_CHARS if key not in ("exception", "traceback") else 4000,
                                   max(budget, 64)))
            budget -= len(value)
            event[key] = value
        elif isinstance(value, (list, tuple)) and len(value) > 50:
            event[key] = list(value[:50]) + [f"...{len(value) - 50} more"]
    return event


class _ToStructlog(logging.Handler):
    """Standard-library records (and captured warnings) become structlog events."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        try:
            logger = structlog.get_logger(record.name)
            event = "python_warning" if record.name == "py.warnings" else "library_log"
            getattr(logger, record.levelname.lower(), logger.warning)(
                event, logger_name=record.name, message=sanitize_error(message))
        except Exception:
            self.handleError(record)


def configure(level: str = "INFO", fmt: str = "json", log_phi: bool = False, stream=None) -> None:
    _state["log_phi"] = log_phi
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_phi,
            _safe_exc_info,
            _cap_fields,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        # one write() per line (message and newline together): the worker processes share the
        # node's stderr, and PrintLogger's two writes let their lines interleave
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: into structlog, keep their warnings, quiet
    # their chatter. Python warnings (highdicom quotes the values it warns about) likewise.
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_ToStructlog())
    root.setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)
    # pydicom both warns and logs each problem of a value; the warning is kept (once per place)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.captureWarnings(True)
    warnings.simplefilter("default")   # each distinct warning once per place, not once per image
    # An exception no one caught (in any thread) is an event too, not a raw traceback on stderr.
    threading.excepthook = _thread_excepthook


def _thread_excepthook(args) -> None:
    if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
        structlog.get_logger("cephnode").error(
            "thread_crashed", thread=getattr(args.thread, "name", None),
            exception=sanitize_traceback(args.exc_value))


def phi_fields(ds: Any) -> dict[str, str]:
    """Patient identification for a log event (dropped by _drop_phi unless log_phi)."""
    if not _state["log_phi"] or ds is None:
        return {}
    try:
        return {"patient_name": str(ds.get("PatientName", "")), "patient_id": str(ds.get("PatientID", ""))}
    except Exception:
        return {}


def get_logger(name: str = "cephnode"):
    return structlog.get_logger(name)
