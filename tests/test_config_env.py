"""Every configuration key can be set from the environment (CEPHNODE__SECTION__KEY), secrets
included, and `cephnode config check --sources` says where each value came from."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from cephnode.config.loading import ConfigError, load_config, load_config_with_sources, value_sources
from tests.support.nodeproc import REPO_ROOT, make_node, test_model_pack
from tests.support.orthanc import free_port

EXAMPLE = REPO_ROOT / "config" / "example.toml"


def _env_name(key: str) -> str:
    """listen.allowed_callers[0].hosts -> CEPHNODE__LISTEN__ALLOWED_CALLERS__0__HOSTS"""
    return "CEPHNODE__" + key.replace("[", ".").replace("]", "").replace(".", "__").upper()


def _as_env_text(value) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return json.dumps([str(v) for v in value])
    return str(value)


def _lookup(cfg, key: str):
    obj = cfg
    for part in key.replace("]", "").replace("[", ".").split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def test_every_key_of_the_example_can_come_from_the_environment(tmp_path):
    """Each key, set in the environment over the file, gives the same
    validated configuration as the file did, and is reported as coming from that variable."""
    base = load_config_with_sources(EXAMPLE, env={})
    keys = [(k, _lookup(base.config, k)) for k, _, _ in value_sources(base)]
    assert len(keys) >= 70
    env = {}
    for key, value in keys:
        if value is None:
            continue
        if "destinations[" in key or "allowed_callers[" in key:
            continue   # tables in arrays: checked below (the file defines the entries)
        env[_env_name(key)] = _as_env_text(value)
    env["CEPHNODE__DESTINATIONS__PACS__PORT"] = "4343"                      # by destination name
    env["CEPHNODE__LISTEN__ALLOWED_CALLERS__0__RETURN_PORT"] = "4545"         # by index
    env["CEPHNODE__DESTINATIONS__0__TLS__KEY_PASSWORD"] = "dest-secret"       # a secret
    env["CEPHNODE__HTTP__TOKEN"] = "http-secret"
    loaded = load_config_with_sources(EXAMPLE, env=env)
    cfg = loaded.config
    sources = {k: origin for k, _, origin in value_sources(loaded)}
    for key, value in keys:
        if value is not None and "[" not in key:
            assert sources[key] == f"env {_env_name(key)}", key
            got = _lookup(cfg, key)
            if isinstance(value, Path):   # relative paths resolve against the file's folder either way
                assert Path(got) == value, key
            elif not isinstance(value, SecretStr):
                assert got == value, key
    assert cfg.destinations[0].port == 4343 and sources["destinations[0].port"] == "env CEPHNODE__DESTINATIONS__PACS__PORT"
    assert cfg.listen.allowed_callers[0].return_port == 4545
    assert cfg.destinations[0].tls.key_password.get_secret_value() == "dest-secret"
    assert cfg.http.token.get_secret_value() == "http-secret"
    assert sources["listen.ae_title"].startswith("env ")
    assert sources["destinations[0].host"] == f"file {EXAMPLE}"
    assert sources["retry.max_attempts"].startswith("env ")


def test_env_only_configuration_and_clear_errors():
    cfg = load_config(None, env={"CEPHNODE__LISTEN__PORT": "11300", "CEPHNODE__SELECTION__MODALITIES": '["dx", "cr"]',
                                 "CEPHNODE__DESTINATIONS__0__NAME": "pacs", "CEPHNODE__DESTINATIONS__0__AE_TITLE": "P",
                                 "CEPHNODE__DESTINATIONS__0__HOST": "10.0.0.5", "CEPHNODE__DESTINATIONS__0__PORT": "104",
                                 "CEPHNODE__DESTINATIONS__0__KINDS": '["sr"]'})
    assert cfg.listen.port == 11300 and cfg.selection.modalities == ["DX", "CR"]
    assert cfg.destinations[0].host == "10.0.0.5" and cfg.destinations[0].kinds == ["sr"]
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"CEPHNODE__LISTEN__PORT": "eleven", "CEPHNODE__LISTEN__PROT": "1"})
    text = str(info.value)
    assert "listen.port (from CEPHNODE__LISTEN__PORT)" in text and "listen.prot (from CEPHNODE__LISTEN__PROT)" in text
    with pytest.raises(ConfigError, match="no entry named 'nope'"):
        load_config(EXAMPLE, env={"CEPHNODE__DESTINATIONS__NOPE__PORT": "1"})
    with pytest.raises(ConfigError, match="network address"):   # the admin endpoint off loopback needs protection
        load_config(None, env={"CEPHNODE__HTTP__BIND_ADDRESS": "0.0.0.0"})
    assert load_config(None, env={"CEPHNODE__HTTP__BIND_ADDRESS": "0.0.0.0", "CEPHNODE__HTTP__TOKEN": "t"}).http.token


def test_config_check_sources_on_the_command_line():
    env = {"PATH": "/usr/bin:/bin", "CEPHNODE__LISTEN__PORT": "11400", "CEPHNODE__HTTP__TOKEN": "do-not-print"}
    res = subprocess.run([sys.executable, "-m", "cephnode", "config", "check", str(EXAMPLE), "--sources"],
                         cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.startswith("  ") and not ln.strip().startswith("warning")}
    assert lines["listen.port"].split()[1:] == ["11400", "env", "CEPHNODE__LISTEN__PORT"]
    assert lines["listen.ae_title"].endswith(f"file {EXAMPLE}")
    assert lines["retry.factor"].endswith("default") or lines["retry.factor"].endswith(f"file {EXAMPLE}")
    assert "********" in lines["http.token"] and "do-not-print" not in res.stdout
    assert lines["http.token"].endswith("env CEPHNODE__HTTP__TOKEN")


@pytest.mark.slow
def test_serve_takes_its_port_from_the_environment(tmp_path):
    node = make_node(tmp_path / "node", port=free_port(), pack=test_model_pack(tmp_path / "pack"))
    env_port = free_port()
    node.env = {"CEPHNODE__LISTEN__PORT": str(env_port), "CEPHNODE__LISTEN__AE_TITLE": "ENVNODE"}
    node.config["listen"]["port"] = env_port          # where wait_ready looks; the file still says the other
    node.config["listen"]["ae_title"] = "ENVNODE"
    with node:
        node.start()                                   # answers C-ECHO as ENVNODE on the env port
        assert any(e.get("event") == "listening" and e.get("port") == env_port and e.get("ae_title") == "ENVNODE"
                   for e in node.log_events())


def test_destination_kinds_report_each_missing_key(tmp_path):
    f = tmp_path / "d.toml"
    f.write_text('[[destinations]]\nname = "x"\n[[destinations]]\nname = "web"\ntype = "dicomweb"\n'
                 'url = "https://pacs.example/dicom-web"\nauth = "basic"\n')
    with pytest.raises(ConfigError) as info:
        load_config(f, env={})
    assert [p.split(":")[0] for p in info.value.problems] == [
        "destinations[0].ae_title", "destinations[0].host", "destinations[0].port",
        "destinations[1].username", "destinations[1].password"]
    cfg = load_config(f, env={"CEPHNODE__DESTINATIONS__X__AE_TITLE": "PACS", "CEPHNODE__DESTINATIONS__X__HOST": "h",
                              "CEPHNODE__DESTINATIONS__X__PORT": "104", "CEPHNODE__DESTINATIONS__WEB__USERNAME": "u",
                              "CEPHNODE__DESTINATIONS__WEB__PASSWORD": "p"})
    assert cfg.destinations[1].address == "https://pacs.example/dicom-web"
    assert cfg.destinations[0].address == "PACS@h:104"
    with pytest.raises(ConfigError, match="url"):
        load_config(None, env={"CEPHNODE__DESTINATIONS__0__NAME": "w", "CEPHNODE__DESTINATIONS__0__TYPE": "dicomweb",
                               "CEPHNODE__DESTINATIONS__0__URL": "ftp://x"})
