"""The node's whole configuration as pydantic models.

Every model forbids unknown keys, so a typo in the TOML file is an error with its key path
rather than a silently ignored setting. Defaults are what `cephnode serve` runs with when
there is no file at all.
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from cephnode.domain.outputs import DEFAULT_OUTPUT_KINDS, OutputKind

_AE_CHARS = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: 16 chars, no backslash or controls


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_CHARS.match(value):
        raise ValueError("an AE title is 1 to 16 printable ASCII characters without a backslash")
    return stripped


class MissingKeys(ValueError):
    """Keys a model needs in its present form (config.loading reports each with its path)."""

    def __init__(self, keys: list[str], why: str):
        self.keys, self.why = keys, why
        super().__init__(f"{why}: {', '.join(keys)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerTls(_Strict):
    """TLS on the node's own listening port (DICOM TLS, PS3.15 B.1)."""
    enabled: bool = False
    cert_file: Path | None = None          # PEM certificate chain of the node
    key_file: Path | None = None           # PEM private key
    key_password: SecretStr | None = None  # better set by env CEPHNODE_TLS_KEY_PASSWORD
    ca_file: Path | None = None            # PEM CAs that sign the callers' client certificates
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _complete(self) -> "ServerTls":
        if self.enabled:
            missing = [k for k in ("cert_file", "key_file") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"TLS is enabled but {', '.join(missing)} is not set")
            if self.require_client_cert and self.ca_file is None:
                raise ValueError("require_client_cert needs ca_file (the CAs that sign client certificates)")
        return self


class ClientTls(_Strict):
    """TLS when the node connects to a destination."""
    enabled: bool = False
    ca_file: Path | None = None            # CAs to verify the destination; None: the system store
    cert_file: Path | None = None          # client certificate, if the destination asks for one
    key_file: Path | None = None
    key_password: SecretStr | None = None  # better set by env CEPHNODE_DEST_<NAME>_KEY_PASSWORD
    server_hostname: str | None = None     # name to check in the destination's certificate; default: host
    verify: bool = True


class AllowedCaller(_Strict):
    ae_title: str
    hosts: list[str] = Field(default_factory=list)   # empty: any address; else only these IPs
    return_port: int | None = Field(default=None, ge=1, le=65535)  # where this AE listens (return-to-sender)

    _ae = field_validator("ae_title")(_check_ae_title)


class ListenConfig(_Strict):
    ae_title: str = "CEPHNODE"
    bind_address: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    max_associations: int = Field(default=10, ge=1, le=200)
    max_pdu_bytes: int = Field(default=65536, ge=4096, le=2**24)
    acse_timeout_s: float = Field(default=30, gt=0)
    dimse_timeout_s: float = Field(default=60, gt=0)
    network_timeout_s: float = Field(default=120, gt=0)
    check_called_ae: bool = True           # refuse associations addressed to another AE title
    # Empty list: any calling AE title is accepted (logged with a warning at start).
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)
    tls: ServerTls = Field(default_factory=ServerTls)

    _ae = field_validator("ae_title")(_check_ae_title)

    @model_validator(mode="after")
    def _unique_callers(self) -> "ListenConfig":
        seen: set[str] = set()
        for caller in self.allowed_callers:
            if caller.ae_title in seen:
                raise ValueError(f"allowed caller {caller.ae_title!r} is listed twice")
            seen.add(caller.ae_title)
        return self


class StorageConfig(_Strict):
    data_dir: Path = Path("cephnode-data")  # relative paths are relative to the working directory
    spool_dir: Path | None = None           # default <data_dir>/spool
    db_path: Path | None = None             # default <data_dir>/queue.sqlite
    outbox_dir: Path | None = None          # default <data_dir>/outbox
    # Days after which the files of finished work are deleted (node/retention.py says exactly
    # what); 0 keeps everything forever.
    retention_days: float = Field(default=30.0, ge=0.0)
    # Disk watermark: with less free space than this on the spool's file system the node
    # refuses C-STOREs with status A700 (out of resources; the sender retries later) instead
    # of failing half-way through a write. 0 turns the check off.
    min_free_mb: float = Field(default=1024.0, ge=0.0)
    # A postgresql:// URL puts the queue in PostgreSQL, shared by several `cephnode serve`
    # processes on one host or many (`--role`); spool_dir and outbox_dir must then be one
    # folder every process sees. Unset: the embedded SQLite file db_path. Keep the password out
    # of the file: libpq reads PGPASSWORD or ~/.pgpass.
    database: str | None = None
    # How long a claimed job or delivery stays with a process that stops renewing it (killed,
    # host lost) before another process takes it again. Renewed every lease_s / 3.
    lease_s: float = Field(default=30.0, ge=1.0, le=3600.0)

    @field_validator("database")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and value.split("://", 1)[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL (the embedded SQLite file is storage.db_path)")
        return value

    @model_validator(mode="after")
    def _one_queue(self) -> "StorageConfig":
        if self.database is not None and self.db_path is not None:
            raise ValueError("set either database (PostgreSQL) or db_path (SQLite), not both")
        return self

    @property
    def spool(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"

    @property
    def db(self) -> Path:
        """The SQLite file (when database is unset)."""
        return self.db_path or self.data_dir / "queue.sqlite"

    @property
    def queue(self) -> str | Path:
        """Where the queue lives: the PostgreSQL URL, else the SQLite file."""
        return self.database or self.db

    @property
    def shared(self) -> bool:
        """Several node processes may share this queue (PostgreSQL)."""
        return self.database is not None

    @property
    def outbox(self) -> Path:
        return self.outbox_dir or self.data_dir / "outbox"


DEFAULT_SOP_CLASSES = [
    str(DigitalXRayImageStorageForPresentation),
    str(DigitalXRayImageStorageForProcessing),
    str(ComputedRadiographyImageStorage),
    str(SecondaryCaptureImageStorage),
]


class SelectionRules(_Strict):
    """Which received instances are traced. Defaults fit lateral cephalograms: a projection
    radiograph of the skull in a lateral view. An attribute the instance lacks passes when
    its *_missing_ok is true (many cephalostats leave BodyPartExamined or ViewPosition empty)."""
    sop_classes: list[str] = Field(default_factory=lambda: list(DEFAULT_SOP_CLASSES))
    modalities: list[str] = Field(default_factory=lambda: ["DX", "CR", "OT", "RG", "PX"])
    body_parts: list[str] = Field(default_factory=lambda: ["SKULL", "HEAD", "FACE", "JAW", "TMJ", "HEADNECK"])
    body_part_missing_ok: bool = True
    view_positions: list[str] = Field(default_factory=lambda: ["LL", "RL", "LAT", "LATERAL"])
    view_position_missing_ok: bool = True
    # Regular expressions (Python syntax, case-insensitive) on SeriesDescription; a match in
    # exclude wins. Empty include: any description.
    series_description_include: list[str] = Field(default_factory=list)
    series_description_exclude: list[str] = Field(
        default_factory=lambda: [r"\b(PA|AP|PANO|PANORAMIC|OPG|FRONTAL|WATERS|TOWNE|HAND|WRIST)\b"])
    min_rows: int = Field(default=256, ge=1)
    min_columns: int = Field(default=256, ge=1)
    # No upper limit by default: absurd sizes are refused by the pixel reader, so the job fails
    # with that reason (visible in `cephnode status`) instead of being silently skipped.
    max_rows: int | None = Field(default=None, ge=1)
    max_columns: int | None = Field(default=None, ge=1)

    @field_validator("series_description_include", "series_description_exclude")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {p!r}: {exc}") from None
        return patterns

    @field_validator("modalities", "body_parts", "view_positions")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]

    @model_validator(mode="after")
    def _sizes(self) -> "SelectionRules":
        if (self.max_rows is not None and self.min_rows > self.max_rows) or (
                self.max_columns is not None and self.min_columns > self.max_columns):
            raise ValueError("min_rows/min_columns must not exceed max_rows/max_columns")
        return self


class StudyConfig(_Strict):
    # Modalities send no end-of-study signal: a study is complete after this long without a new instance.
    quiet_period_s: float = Field(default=30.0, ge=0.0, le=86400)


class Destination(_Strict):
    """An archive to send results to: by C-STORE (type "dimse": ae_title, host, port) or by
    DICOMweb STOW-RS (type "dicomweb": url, optional basic or bearer auth, TLS by https)."""
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    type: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    calling_ae_title: str | None = None     # default: the node's own AE title
    kinds: list[OutputKind] = Field(default_factory=lambda: list(DEFAULT_OUTPUT_KINDS))
    tls: ClientTls = Field(default_factory=ClientTls)
    # C-STOREs in flight at once, one association each: an archive spends tens of ms per object,
    # so one association caps a destination at about a dozen objects a second (node/delivery.py)
    max_associations: int = Field(default=2, ge=1, le=16)
    # DICOMweb only
    url: str | None = None                  # the DICOMweb root, e.g. https://pacs.example/dicom-web
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: SecretStr | None = None       # better set by env CEPHNODE__DESTINATIONS__<NAME>__PASSWORD
    token: SecretStr | None = None          # better set by env CEPHNODE__DESTINATIONS__<NAME>__TOKEN
    timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, v: str | None) -> str | None:
        return None if v is None else _check_ae_title(v)

    @model_validator(mode="after")
    def _complete(self) -> "Destination":
        if self.type == "dimse":
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) is None]
            if missing:
                raise MissingKeys(missing, "a DIMSE destination needs")
        else:
            if not self.url or not re.match(r"^https?://[^/]+", self.url):
                raise ValueError("a DICOMweb destination needs url = \"http(s)://host[:port]/dicom-web-root\"")
            if self.auth == "basic" and (self.username is None or self.password is None):
                raise MissingKeys([k for k in ("username", "password") if getattr(self, k) is None],
                                  'auth = "basic" needs')
            if self.auth == "bearer" and self.token is None:
                raise MissingKeys(["token"], 'auth = "bearer" needs')
        return self

    @property
    def address(self) -> str:
        return (self.url or "") if self.type == "dicomweb" else f"{self.ae_title}@{self.host}:{self.port}"


class ReturnToSender(_Strict):
    """Send results back to the AE that sent the image, at the association's address and the
    port given for that AE in listen.allowed_callers (return_port)."""
    enabled: bool = False
    kinds: list[OutputKind] = Field(default_factory=lambda: list(DEFAULT_OUTPUT_KINDS))
    tls: ClientTls = Field(default_factory=ClientTls)


class RetryConfig(_Strict):
    max_attempts: int = Field(default=8, ge=1, le=100)
    initial_delay_s: float = Field(default=30.0, ge=0.0)
    factor: float = Field(default=2.0, ge=1.0, le=10.0)
    max_delay_s: float = Field(default=3600.0, ge=0.0)

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
        return min(self.max_delay_s, self.initial_delay_s * self.factor ** max(0, attempts - 1))


class ProcessingConfig(_Strict):
    models_dir: Path | None = None          # None: $CEPHNODE_MODELS, else the embedded default pack
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, le=256)  # ONNX Runtime intra-op threads
    workers: int = Field(default=1, ge=1, le=32)  # jobs processed at once (one process each, own Pipeline)
    # Kinds kept in the outbox even when no destination wants them.
    outbox_kinds: list[OutputKind] = Field(default_factory=lambda: list(DEFAULT_OUTPUT_KINDS))
    max_processing_attempts: int = Field(default=3, ge=1, le=20)  # crashes mid-inference before parking
    # Stage 1 test-time shifts: "pack" runs the extra passes the pack's pack.json names (1.5.0
    # had two; 1.6.0 has none, its refiner does better); "none": one pass.
    test_time_shifts: Literal["pack", "none"] = "pack"
    # The landmark refiner (pack.json "refinement", inference.refine): "pack" uses it as the pack
    # says (1.6.0: ~0.09 mm better on test1 for ~20 ms CPU per image); "none": Stage 1's points.
    refine: Literal["pack", "none"] = "pack"
    # Stage 1 over several ready jobs in one call (node.workers): "auto" when the pack's Stage 1
    # runs on a GPU with a dynamic batch axis (Pipeline.batches_stage1; on the CPU a batch
    # measured no faster, bench/bench_batch.py), "on" always (tests, benchmarks), "off" never.
    batch: Literal["auto", "on", "off"] = "auto"
    batch_size: int = Field(default=4, ge=1, le=8)   # jobs one worker claims for one batch
    # ---- isolation (node.workers): each worker is a child process ----
    # A job running longer than this is killed with its process and counts as a failed attempt.
    job_timeout_s: float = Field(default=300.0, gt=0, le=86400)
    # Address space a worker may add to what the loaded pack takes (MiB); 0: no limit.
    # Not applied under CUDA, whose driver reserves huge address ranges it never touches.
    worker_memory_mb: int = Field(default=3072, ge=0)


class LimitsConfig(_Strict):
    """Resource bounds against broken or hostile peers and files (docs/node.md, "Bounds").
    Kept in their own section so that each bound is stated in one place."""
    # A new connection's A-ASSOCIATE-RQ must arrive whole within this; until it has, the
    # connection holds no association slot.
    request_timeout_s: float = Field(default=10.0, gt=0, le=600)
    # A PDU must arrive whole within this (a stalled or slow-drip peer frees its slot).
    pdu_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # The TLS handshake of an accepted connection (in the connection's thread, not the accept loop).
    tls_handshake_timeout_s: float = Field(default=10.0, gt=0, le=600)
    # Largest data set one C-STORE may carry; a larger one is answered 0xA700 (out of
    # resources) and nothing of it is kept. Also caps what a deflated data set may inflate to.
    max_instance_mb: int = Field(default=256, ge=1, le=4096)
    # Largest image (Rows x Columns, and the dimensions inside the codestream) decoded.
    max_image_pixels: int = Field(default=50_000_000, ge=4096, le=400_000_000)


def is_loopback(address: str) -> bool:
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpTls(_Strict):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> "HttpTls":
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("TLS is enabled but cert_file or key_file is not set")
        return self


class HttpConfig(_Strict):
    """The admin HTTP endpoint: /metrics (Prometheus), /healthz, /readyz and the status page."""
    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: int = Field(default=9112, ge=0, le=65535)   # 0: any free port (tests)
    # Required (or tls) when bound to a non-loopback address: clients send
    # "Authorization: Bearer <token>". Better set by env CEPHNODE__HTTP__TOKEN.
    token: SecretStr | None = None
    tls: HttpTls = Field(default_factory=HttpTls)

    @model_validator(mode="after")
    def _protected(self) -> "HttpConfig":
        if self.enabled and not is_loopback(self.bind_address) and self.token is None and not self.tls.enabled:
            raise ValueError(f"bound to {self.bind_address}, a network address: set token or enable tls")
        return self


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"
    log_phi: bool = False                   # patient names/IDs in logs only when an admin turns this on


class NodeConfig(_Strict):
    listen: ListenConfig = Field(default_factory=ListenConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    selection: SelectionRules = Field(default_factory=SelectionRules)
    study: StudyConfig = Field(default_factory=StudyConfig)
    destinations: list[Destination] = Field(default_factory=list)
    return_to_sender: ReturnToSender = Field(default_factory=ReturnToSender)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)

    @model_validator(mode="after")
    def _unique_destinations(self) -> "NodeConfig":
        names = [d.name for d in self.destinations]
        if "sender" in names:
            raise ValueError("destination name 'sender' is reserved for return_to_sender")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique: {', '.join(dupes)}")
        if self.return_to_sender.enabled and not any(c.return_port for c in self.listen.allowed_callers):
            raise ValueError("return_to_sender is enabled but no listen.allowed_callers entry has a return_port")
        return self
