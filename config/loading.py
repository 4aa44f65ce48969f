"""Read the node's TOML file, apply env-var overrides for secrets, validate, and report every
problem with its key path (e.g. `destinations[1].port: ...`)."""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cephnode.config.schema import ClientTls, NodeConfig, ServerTls

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


def _apply_env(raw: dict[str, Any], env: dict[str, str]) -> None:
    """Secrets do not belong in a file that is copied around: env vars override them."""
    if env.get(ENV_TLS_KEY_PASSWORD):
        raw.setdefault("listen", {}).setdefault("tls", {})["key_password"] = env[ENV_TLS_KEY_PASSWORD]
    if env.get(ENV_RETURN_KEY_PASSWORD):
        raw.setdefault("return_to_sender", {}).setdefault("tls", {})["key_password"] = env[ENV_RETURN_KEY_PASSWORD]
    for dest in raw.get("destinations", []) or []:
        if isinstance(dest, dict) and isinstance(dest.get("name"), str):
            value = env.get(destination_password_env(dest["name"]))
            if value:
                tls = dest.setdefault("tls", {})
                if isinstance(tls, dict):
                    tls["key_password"] = value


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
    md = cfg.processing.models_dir
    if md is not None and not md.is_dir():
        problems.append(f"processing.models_dir: folder not found: {md}")
    return problems


def parse_config(raw: dict[str, Any], *, source: str = "<config>", base: Path | None = None,
                 env: dict[str, str] | None = None) -> NodeConfig:
    raw = dict(raw)
    _apply_env(raw, dict(os.environ) if env is None else env)
    try:
        cfg = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{_key_path(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(source, problems) from None
    if base is not None:
        _resolve_paths(cfg, base)
    problems = _file_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> NodeConfig:
    """The configuration from a TOML file, or the defaults when path is None."""
    if path is None:
        return parse_config({}, source="<defaults>", env=env)
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_config(raw, source=str(path), base=path.resolve().parent, env=env)
