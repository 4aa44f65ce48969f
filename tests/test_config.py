"""The node's configuration: defaults, the example file, every problem reported with its key path."""
from __future__ import annotations

import pytest

from cephnode.config.loading import ConfigError, destination_password_env, load_config
from cephnode.config.schema import NodeConfig
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.toml"


def test_defaults_need_no_file():
    cfg = load_config(None, env={})
    assert cfg.listen.ae_title == "CEPHNODE"
    assert cfg.listen.port == 11112
    assert cfg.destinations == []
    assert cfg.storage.outbox.name == "outbox"
    assert cfg.processing.models_dir is None


def test_example_file_is_valid_and_documents_every_key():
    cfg = load_config(EXAMPLE, env={})
    text = EXAMPLE.read_text()
    # every field of every section appears in the example (commented or set)
    for section, model in NodeConfig.model_fields.items():
        assert f"[{section}]" in text or f"[[{section}]]" in text, section
        sub = model.annotation
        fields = getattr(sub, "model_fields", None)
        if fields is None:  # destinations: a list of Destination
            from cephnode.config.schema import Destination
            fields = Destination.model_fields
        for key in fields:
            assert key in text, f"{section}.{key} missing from example.toml"
    assert cfg.destinations[0].name == "pacs"
    # relative paths resolve against the file's folder
    assert cfg.storage.spool.is_absolute() and cfg.storage.spool.parent.parent == EXAMPLE.parent


def test_every_problem_is_reported_with_its_key_path(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[listen]\nport = 0\nae_titel = "X"\n'
        '[[listen.allowed_callers]]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n'
        '[[destinations]]\nname = "pacs"\nae_title = "P"\nhost = "h"\nport = 70000\nkinds = ["sr", "pdf"]\n'
        '[selection]\nseries_description_exclude = ["("]\n'
        '[listen.tls]\nenabled = true\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(bad, env={})
    problems = "\n".join(info.value.problems)
    for path in ("listen.port", "listen.ae_titel", "listen.allowed_callers[0].ae_title",
                 "destinations[0].port", "destinations[0].kinds[1]", "selection.series_description_exclude",
                 "listen.tls"):
        assert any(p.startswith(path + ":") for p in info.value.problems), (path, problems)


def test_missing_files_and_bad_toml(tmp_path):
    f = tmp_path / "tls.toml"
    f.write_text('[listen.tls]\nenabled = true\ncert_file = "nope.crt"\nkey_file = "nope.key"\n')
    with pytest.raises(ConfigError) as info:
        load_config(f, env={})
    assert [p.split(":")[0] for p in info.value.problems] == ["listen.tls.cert_file", "listen.tls.key_file"]
    broken = tmp_path / "broken.toml"
    broken.write_text("[listen\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})


def test_secrets_come_from_the_environment(tmp_path):
    f = tmp_path / "d.toml"
    f.write_text('[storage]\ndata_dir = "/srv/cephnode"\n[[destinations]]\nname = "main-pacs"\nae_title = "P"\nhost = "h"\nport = 104\n')
    env = {destination_password_env("main-pacs"): "s3cret", "CEPHNODE_TLS_KEY_PASSWORD": "k"}
    cfg = load_config(f, env=env)
    assert destination_password_env("main-pacs") == "CEPHNODE_DEST_MAIN_PACS_KEY_PASSWORD"
    assert cfg.destinations[0].tls.key_password.get_secret_value() == "s3cret"
    assert cfg.listen.tls.key_password.get_secret_value() == "k"
    assert "s3cret" not in repr(cfg)
    assert cfg.storage.data_dir == Path("/srv/cephnode")  # absolute paths stay as they are


def test_retry_backoff_is_exponential_and_capped():
    cfg = load_config(None, env={})
    r = cfg.retry.model_copy(update={"initial_delay_s": 2, "factor": 3, "max_delay_s": 50})
    assert [r.delay_after(n) for n in (1, 2, 3, 4, 5)] == [2, 6, 18, 50, 50]
