"""Read the node's TOML file, apply environment overrides, validate, and report every problem
with its key path (e.g. `destinations[1].port: ...`).

Every key can be set from the environment as CEPHNODE__<SECTION>__<KEY> (`__` between levels,
any case): CEPHNODE__LISTEN__PORT=11113, CEPHNODE__HTTP__TOKEN=..., for arrays of tables an
index or, for destinations, the name: CEPHNODE__DESTINATIONS__0__PORT or
CEPHNODE__DESTINATIONS__PACS__TLS__KEY_PASSWORD. A value that looks like a JSON array or
object is parsed as JSON (lists such as kinds); everything else is a string that pydantic
converts. The environment wins over the file, the file over the defaults, and `cephnode
config check --sources` says for every key which of the three it came from. This is the
nested-delimiter convention of pydantic-settings, done here because we also need the origin
of each value and an injectable environment for tests, which pydantic-settings offers neither.
The older secret variables (CEPHNODE_TLS_KEY_PASSWORD, CEPHNODE_DEST_<NAME>_KEY_PASSWORD,
CEPHNODE_RETURN_KEY_PASSWORD) still work."""
from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cephnode.config.schema import ClientTls, MissingKeys, NodeConfig, ServerTls

ENV_TLS_KEY_PASSWORD = "CEPHNODE_TLS_KEY_PASSWORD"
ENV_RETURN_KEY_PASSWORD = "CEPHNODE_RETURN_KEY_PASSWORD"


def destination_password_env(name: str) -> str:
    return f"CEPHNODE_DEST_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_KEY_PASSWORD"


class ConfigError(ValueError):
    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


ENV_PREFIX = "CEPHNODE__"


def _apply_env(raw: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    """Apply environment overrides to the raw (TOML-shaped) dict. Returns key path -> the
    variable that set it."""
    origin: dict[str, str] = {}
    # the older secret variables first, so the generic form wins when both are set
    if env.get(ENV_TLS_KEY_PASSWORD):
        raw.setdefault("listen", {}).setdefault("tls", {})["key_password"] = env[ENV_TLS_KEY_PASSWORD]
        origin["listen.tls.key_password"] = ENV_TLS_KEY_PASSWORD
    if env.get(ENV_RETURN_KEY_PASSWORD):
        raw.setdefault("return_to_sender", {}).setdefault("tls", {})["key_password"] = env[ENV_RETURN_KEY_PASSWORD]
        origin["return_to_sender.tls.key_password"] = ENV_RETURN_KEY_PASSWORD
    for i, dest in enumerate(raw.get("destinations", []) or []):
        if isinstance(dest, dict) and isinstance(dest.get("name"), str):
            var = destination_password_env(dest["name"])
            if env.get(var):
                tls = dest.setdefault("tls", {})
                if isinstance(tls, dict):
                    tls["key_password"] = env[var]
                    origin[f"destinations[{i}].tls.key_password"] = var
    problems: list[str] = []
    for var in sorted(v for v in env if v.upper().startswith(ENV_PREFIX)):
        parts = [p.lower() for p in var[len(ENV_PREFIX):].split("__")]
        if not all(parts):
            problems.append(f"{var}: empty key between '__'")
            continue
        try:
            path = _set_path(raw, parts, _env_value(env[var]))
        except ValueError as exc:
            problems.append(f"{var}: {exc}")
            continue
        origin[path] = var
    if problems:
        raise ConfigError("environment", problems)
    return origin


def _env_value(text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"looks like JSON but is not valid: {exc}") from None
    return text


def _set_path(raw: dict[str, Any], parts: list[str], value: Any) -> str:
    """Set raw[parts...] = value, creating tables on the way; returns the key path."""
    node: Any = raw
    path = ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if part.isdigit():
                index = int(part)
                if index > len(node):
                    raise ValueError(f"index {index} skips entries (there are {len(node)})")
            else:  # a destination (or any table with a name) by its name
                names = [str(x.get("name", "")).lower() if isinstance(x, dict) else "" for x in node]
                if part not in names:
                    raise ValueError(f"no entry named {part!r} under {path or '(top level)'}")
                index = names.index(part)
            if index == len(node):
                node.append({})
            path += f"[{index}]"
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ValueError(f"{path} is not a table")
        path += ("." if path else "") + part
        if last:
            node[part] = value
        else:
            nxt = node.get(part)
            if nxt is None:
                nxt = [] if parts[depth + 1].isdigit() else {}
                node[part] = nxt
            node = nxt
    return path


def _resolve_paths(cfg: NodeConfig, base: Path) -> None:
    """Relative paths in a file are relative to that file's folder, not to wherever the
    service happens to be started from."""
    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return base / p

    st = cfg.storage
    st.data_dir = fix(st.data_dir)  # type: ignore[assignment]
    st.spool_dir, st.db_path, st.outbox_dir = fix(st.spool_dir), fix(st.db_path), fix(st.outbox_dir)
    cfg.processing.models_dir = fix(cfg.processing.models_dir)
    tls_blocks: list[ServerTls | ClientTls] = [cfg.listen.tls, cfg.return_to_sender.tls]
    tls_blocks += [d.tls for d in cfg.destinations]
    for tls in tls_blocks:
        for key in ("cert_file", "key_file", "ca_file"):
            setattr(tls, key, fix(getattr(tls, key)))
    cfg.http.tls.cert_file, cfg.http.tls.key_file = fix(cfg.http.tls.cert_file), fix(cfg.http.tls.key_file)


def _file_problems(cfg: NodeConfig) -> list[str]:
    """Problems pydantic cannot see: files that must exist."""
    problems: list[str] = []

    def need(path: Path | None, key: str) -> None:
        if path is not None and not path.is_file():
            problems.append(f"{key}: file not found: {path}")

    if cfg.listen.tls.enabled:
        for k in ("cert_file", "key_file", "ca_file"):
            need(getattr(cfg.listen.tls, k), f"listen.tls.{k}")
    for i, d in enumerate(cfg.destinations):
        if d.tls.enabled:
            for k in ("cert_file", "key_file", "ca_file"):
                need(getattr(d.tls, k), f"destinations[{i}].tls.{k}")
    if cfg.return_to_sender.enabled and cfg.return_to_sender.tls.enabled:
        for k in ("cert_file", "key_file", "ca_file"):
            need(getattr(cfg.return_to_sender.tls, k), f"return_to_sender.tls.{k}")
    if cfg.http.enabled and cfg.http.tls.enabled:
        for k in ("cert_file", "key_file"):
            need(getattr(cfg.http.tls, k), f"http.tls.{k}")
    md = cfg.processing.models_dir
    if md is not None and not md.is_dir():
        problems.append(f"processing.models_dir: folder not found: {md}")
    return problems


@dataclass
class LoadedConfig:
    config: NodeConfig
    file_keys: set[str]          # key paths the file sets
    env_keys: dict[str, str]     # key path -> environment variable that set it
    source: str


def parse_config(raw: dict[str, Any], *, source: str = "<config>", base: Path | None = None,
                 env: dict[str, str] | None = None) -> NodeConfig:
    return _parse(raw, source=source, base=base, env=env).config


def _parse(raw: dict[str, Any], *, source: str, base: Path | None, env: dict[str, str] | None) -> LoadedConfig:
    import copy

    raw = copy.deepcopy(raw)
    file_keys = set(_leaf_paths(raw))
    env_keys = _apply_env(raw, dict(os.environ) if env is None else env)
    try:
        cfg = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            error = (e.get("ctx") or {}).get("error")
            if isinstance(error, MissingKeys):   # one line per missing key, with its own path
                for k in error.keys:
                    problems.append(f"{_key_path((*e['loc'], k))}: Field required ({error.why} it)")
                continue
            key = _key_path(e["loc"])
            var = next((v for k, v in env_keys.items() if key == k or key.startswith(k + ".")
                        or k.startswith(key + ".")), None)
            problems.append(f"{key}{f' (from {var})' if var else ''}: {e['msg']}")
        raise ConfigError(source, problems) from None
    if base is not None:
        _resolve_paths(cfg, base)
    problems = _file_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    return LoadedConfig(cfg, file_keys, env_keys, source)


def _leaf_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += _leaf_paths(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        out = []
        for i, v in enumerate(value):
            out += _leaf_paths(v, f"{prefix}[{i}]")
        return out
    return [prefix]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None


def load_config_with_sources(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> LoadedConfig:
    if path is None:
        return _parse({}, source="<defaults>", base=None, env=env)
    path = Path(path)
    return _parse(_read_toml(path), source=str(path), base=path.resolve().parent, env=env)


def load_config(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> NodeConfig:
    """The configuration from a TOML file (or the defaults when path is None), with the
    environment's overrides."""
    return load_config_with_sources(path, env=env).config


def value_sources(loaded: LoadedConfig) -> list[tuple[str, str, str]]:
    """(key path, value as shown, where it came from) for every key of the configuration;
    secrets are masked."""
    from pydantic import SecretStr

    rows: list[tuple[str, str, str]] = []

    def walk(model: Any, prefix: str) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            key = f"{prefix}.{name}" if prefix else name
            if hasattr(type(value), "model_fields"):
                walk(value, key)
            elif isinstance(value, list) and value and all(hasattr(type(v), "model_fields") for v in value):
                for i, item in enumerate(value):
                    walk(item, f"{key}[{i}]")
            else:
                if isinstance(value, SecretStr):
                    shown = "********"
                elif isinstance(value, list):
                    shown = json.dumps([str(v) for v in value])
                else:
                    shown = "" if value is None else str(value)
                var = next((v for k, v in loaded.env_keys.items()
                            if key == k or key.startswith(k + ".") or key.startswith(k + "[")), None)
                if var is not None:
                    origin = f"env {var}"
                elif key in loaded.file_keys:
                    origin = f"file {loaded.source}"
                else:
                    origin = "default"
                rows.append((key, shown, origin))

    walk(loaded.config, "")
    return rows
