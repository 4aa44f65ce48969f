"""The store and role settings: storage.database, --role, and the refusals that keep an
embedded SQLite queue to one process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cephnode.config.loading import ConfigError, parse_config
from cephnode.node.jobstore import JobStore, open_store
from cephnode.node.jobstore_postgres import redact
from cephnode.node.roles import Role, check_role
from tests.support.nodeproc import REPO_ROOT, to_toml
from tests.support.postgres import shared_cluster


def test_storage_database_takes_a_postgresql_url_only():
    cfg = parse_config({"storage": {"database": "postgresql://node@db.example.org/cephnode", "lease_s": 12}})
    assert cfg.storage.shared and cfg.storage.queue == "postgresql://node@db.example.org/cephnode"
    assert cfg.storage.lease_s == 12
    default = parse_config({})
    assert not default.storage.shared and default.storage.queue == default.storage.db
    with pytest.raises(ConfigError) as bad:
        parse_config({"storage": {"database": "/var/lib/cephnode/queue.sqlite"}})
    assert "storage.database: Value error, must be a postgresql:// URL" in str(bad.value)
    with pytest.raises(ConfigError) as both:
        parse_config({"storage": {"database": "postgresql://h/db", "db_path": "q.sqlite"}})
    assert "not both" in str(both.value)
    with pytest.raises(ConfigError):
        parse_config({"storage": {"lease_s": 0.1}})


def test_split_roles_need_a_shared_queue():
    assert Role("all").receives and Role("all").processes
    assert Role("receiver").receives and not Role("receiver").processes
    assert Role("worker").processes and not Role("worker").receives
    check_role(Role.ALL, shared_store=False)
    check_role(Role.WORKER, shared_store=True)
    with pytest.raises(ValueError, match="needs a shared queue"):
        check_role(Role.RECEIVER, shared_store=False)


def test_serve_refuses_a_split_role_on_sqlite(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text(to_toml({"storage": {"data_dir": str(tmp_path / "data")}}) + "\n")
    res = subprocess.run([sys.executable, "-m", "cephnode", "serve", "-c", str(cfg), "--role", "worker"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--role worker needs a shared queue" in res.stderr


def test_status_and_retry_read_a_postgresql_queue(tmp_path):
    url = shared_cluster().new_database()
    store = JobStore(url)
    from cephnode.node.jobstore import InstanceRecord

    store.record_instance(InstanceRecord("7.1", "1.2", "7", "7.0", "", "/s/7.1.dcm", "MOD", None, True, None),
                          failed_reason="cannot parse the dataset", now=0)
    cfg = tmp_path / "node.toml"
    cfg.write_text(to_toml({"storage": {"database": url, "data_dir": str(tmp_path / "nowhere")}}) + "\n")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cephnode", *args, "-c", str(cfg)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["store"].startswith("postgresql postgresql://") and summary["jobs"] == {"failed": 1}
    assert "cannot parse" in summary["failed_jobs"][0]["error"]
    text = cli("status")
    assert text.returncode == 0 and "queue (postgresql" in text.stdout
    assert cli("retry", "--failed").returncode == 0
    assert open_store(parse_config({"storage": {"database": url}}).storage).jobs()[0]["state"] == "queued"
    assert redact("postgresql://node:s3cret@db:5432/q") == "postgresql://node:***@db:5432/q"
