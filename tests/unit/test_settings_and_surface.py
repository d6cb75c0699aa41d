"""Settings, the public surface of each package, and the layering between them."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

import common
import consumer
import consumer.bench
import consumer.ops
import producer
from common.errors import ConfigurationError
from common.keys import Keys
from common.settings import ConsumerSettings, ProducerSettings, normalize_db_url

ROOT = Path(__file__).resolve().parents[2]


def test_environment_configures_and_explicit_values_override(monkeypatch):
    monkeypatch.setenv("SIMSTREAM_REDIS_URL", "redis://10.0.0.9:7000/1")
    monkeypatch.setenv("SIMSTREAM_DB_URL", "sqlite:///from-env.db")
    settings = ConsumerSettings.from_env(db_url="sqlite:///explicit.db", batch_size=None)
    assert settings.redis_url == "redis://10.0.0.9:7000/1"
    assert settings.db_url == "sqlite:///explicit.db" and settings.batch_size == ConsumerSettings.batch_size


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", ""])
def test_a_wrong_redis_url_is_a_configuration_error_that_says_what_to_use(url):
    with pytest.raises(ConfigurationError, match="redis://HOST:PORT/DB"):
        ProducerSettings(redis_url=url or "nothing")


def test_a_wrong_database_url_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="not a SQLAlchemy URL"):
        ConsumerSettings(db_url="sqlite//missing-colon")
    with pytest.raises(ConfigurationError, match="not supported"):
        ConsumerSettings(db_url="oracle://scott@db/x")


def test_bare_paths_become_sqlite_urls():
    assert normalize_db_url("runs.db").startswith("sqlite:////") and normalize_db_url("runs.db").endswith("/runs.db")
    assert normalize_db_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_a_simulations_keys_share_one_cluster_hash_tag():
    keys = Keys("ns")
    assert keys.stream("sim-1") == "ns:{sim-1}:stream" and keys.meta("sim-1") == "ns:{sim-1}:meta"
    assert keys.simulation_of(keys.stream("sim-1").encode()) == "sim-1"


PUBLIC_NAMES = {
    common: ["FORMAT_VERSION", "KINDS", "BatchEncoder", "ConfigurationError", "ConsumerSettings",
             "DatabaseUnavailable", "DecodedEntry", "EncodedBatch", "ExitCode", "GroupMissing", "Keys", "Mix",
             "PermanentError", "PersistTimeout", "ProducerSettings", "RecentStates", "Record", "RecordError",
             "RecordKind", "RedisIMConfig", "RedisSTMConfig", "RedisUnavailable", "RowMaker", "SenderFailed",
             "SimstreamError", "TierWriter", "TransientError", "append_entries", "decode", "decode_entry",
             "layout_named", "make_encoder", "mask_secrets", "row_columns"],
    producer: ["FlushReport", "RedisBufferedDataLogger", "StreamProducer"],
    consumer: ["HealthThresholds", "Sink", "SinkPool", "StreamStatus", "Supervisor", "Worker", "WriteResult",
               "all_statuses", "consumer_name", "stream_status", "verdict"],
    consumer.ops: ["EmbeddedRedis", "HealthThresholds", "RetryResult", "list_dead_letters", "purge_dead_letters",
                   "retry_dead_letters", "status_report", "verdict"],
    consumer.bench: ["EXTRA_MEASUREMENTS", "BenchContext", "BenchOptions", "Measurement", "Row", "run_bench"],
}


def test_each_package_exports_exactly_its_public_names():
    # Every package the distribution ships is pinned here
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(package.__name__ for package in PUBLIC_NAMES) == sorted(shipped)
    for package, names in PUBLIC_NAMES.items():
        assert package.__all__ == names, package.__name__
        assert all(hasattr(package, name) for name in names), package.__name__
        assert len(set(names)) == len(names), package.__name__


def _imported_packages(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_producer_and_consumer_import_common_never_each_other():
    assert "consumer" not in _imported_packages("producer")
    assert "producer" not in _imported_packages("consumer")
    assert not {"producer", "consumer"} & _imported_packages("common")
