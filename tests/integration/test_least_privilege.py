"""The README's ACL rules, applied verbatim: a producer writes its simulation but can neither read
nor remove records, and consumers persist everything with their own user.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import redis

from common import RecentStates
from consumer.ops.embedded_redis import server_version
from common.errors import PersistTimeout
from common.settings import DEFAULT_NAMESPACE
from producer import RedisBufferedDataLogger
from tests.conftest import Cli
from tests.helpers import stream_records, assert_rows_match, produce_workload
from tests.secure_redis import AclUser, SecuredRedis, leaks, new_password

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"
NAMESPACE = DEFAULT_NAMESPACE  # the README's rules are written for the default namespace


def readme_acl_line(user: str) -> str:
    """The README's ``ACL SETUSER <user> ...`` line."""
    [line] = [line for line in README.read_text().splitlines() if line.startswith(f"ACL SETUSER {user} ")]
    return line


def readme_tier_selector() -> str:
    """The Redis 7 selector the README appends to the producer's line for ``recent_state=True``."""
    match = re.search(r"`(\(~simstream:\{\*\}:stm:\*[^`]*\))`", README.read_text())
    assert match, "the README names no tier selector"
    return " ".join(match.group(1).split())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def create_user(admin: redis.Redis, line: str, password: str) -> None:
    """Run a README ``ACL SETUSER`` line with ``password`` in place of its placeholder."""
    words = re.sub(r">[A-Z_]+_PASSWORD", lambda _: f">{password}", line).split()
    assert words[:2] == ["ACL", "SETUSER"]
    admin.execute_command(*words)


@pytest.fixture
def acl_server(redis_binary, tmp_path):
    """A Redis with an admin user only (default user off), for the test to create the README's users."""
    server = SecuredRedis(tmp_path / "redis", redis_binary, [AclUser("admin", new_password(), ("~*", "&*", "+@all"))])
    server.start()
    yield server
    server.stop()


FORBIDDEN_TO_PRODUCER = {
    "XREAD": ("XREAD", "STREAMS", "{stream}", "0"),
    "XREADGROUP": ("XREADGROUP", "GROUP", "simstream", "thief", "STREAMS", "{stream}", "0"),
    "XRANGE": ("XRANGE", "{stream}", "-", "+"),
    "XREVRANGE": ("XREVRANGE", "{stream}", "+", "-"),
    "XTRIM": ("XTRIM", "{stream}", "MAXLEN", "0"),
    "XDEL": ("XDEL", "{stream}", "{first_id}"),
    "DEL": ("DEL", "{stream}"),
    "UNLINK": ("UNLINK", "{stream}"),
}


def assert_producer_cannot_read_or_remove(producer: redis.Redis, stream: str, first_id: str) -> None:
    for name, template in FORBIDDEN_TO_PRODUCER.items():
        command = [part.format(stream=stream, first_id=first_id) for part in template]
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.execute_command(*command)
        # nor through a script, which the producer may run (EVAL)
        with pytest.raises(redis.ResponseError, match="(?i)no permissions|can't run|can't access|NOPERM"):
            producer.execute_command("EVAL", "return redis.call(unpack(ARGV))", 1, stream, *command)


def test_producer_writes_but_cannot_read_or_remove_and_consumers_work(acl_server, tmp_path, simulation_id,
                                                                     sqlite_url, sink_engine):
    # Given: the README's producer and consumer users
    admin = redis.Redis.from_url(acl_server.url)
    producer_password, consumer_password = new_password(), new_password()
    create_user(admin, readme_acl_line("simstream-producer"), producer_password)
    create_user(admin, readme_acl_line("simstream-consumer"), consumer_password)
    producer_url = acl_server.url_for("simstream-producer", producer_password)
    consumer_url = acl_server.url_for("simstream-consumer", consumer_password)

    # When: a simulation logs as the producer user
    logger = RedisBufferedDataLogger(simulation_id, producer_url, namespace=NAMESPACE,
                                     journal_dir=str(tmp_path / "journal"))
    expected = produce_workload(logger, steps=10, agents=5)
    report = logger.close()

    # Then: everything is in Redis, and the producer can neither read nor remove a record
    assert report.all_in_redis and report.complete, report
    stream = f"{NAMESPACE}:{{{simulation_id}}}:stream"
    length = admin.xlen(stream)
    assert int(admin.hget(f"{NAMESPACE}:{{{simulation_id}}}:meta", "records_added")) == report.logged
    assert len(stream_records(admin, stream, simulation_id)) == report.logged
    first_id = admin.xrange(stream, count=1)[0][0].decode()
    assert_producer_cannot_read_or_remove(redis.Redis.from_url(producer_url), stream, first_id)
    assert admin.xlen(stream) == length

    # When: a consumer that died holding an entry is left in the group (so status looks at pending
    # entries and consumers, and workers claim), then `simstream status` and two consumer
    # processes run as the consumer user
    admin.xgroup_create(stream, "simstream", id="0")
    assert admin.xreadgroup("simstream", "dead-consumer", {stream: ">"}, count=1)
    env = {name: value for name, value in os.environ.items() if not name.startswith("SIMSTREAM_")}
    cli = Cli({**env, "SIMSTREAM_REDIS_URL": consumer_url, "SIMSTREAM_DB_URL": sqlite_url,
               "SIMSTREAM_NAMESPACE": NAMESPACE}, tmp_path)
    status = cli.run("status", "--json", timeout=60)
    with pytest.raises(PersistTimeout, match="may not read the stream"):  # it may ask how far the group is
        logger.producer.wait_persisted(timeout_s=0.5)
    consume = cli.run("consume", "--processes", "2", "--drain", "--no-progress", "--claim-idle-ms", "0",
                      "--block-ms", "100", timeout=90)

    # Then: both work, every row is in SQL exactly once, and the stream is gone (retention ran)
    assert status.returncode == 0, status.stderr
    [shown] = json.loads(status.stdout)["streams"]
    assert shown["simulation_id"] == simulation_id and shown["pending"] == 1 and shown["lag"] == length - 1
    assert [consumer["name"] for consumer in shown["consumers"]] == ["dead-consumer"]
    assert consume.returncode == 0, consume.stderr
    assert logger.producer.wait_persisted(timeout_s=10).all_in_redis
    assert_rows_match(sink_engine, simulation_id, expected)
    assert not admin.exists(stream)
    # (redis-py's optional CLIENT SETINFO at connect is refused, and ignored by redis-py)
    refused = [entry for entry in admin.acl_log() if _text(entry["username"]) == "simstream-consumer"
               and not _text(entry["object"]).startswith("client")]
    assert not refused, f"the consumer's rules lack: {[_text(entry['object']) for entry in refused]}"
    assert not leaks(consumer_password, status.stdout + status.stderr + consume.stdout + consume.stderr)


@pytest.mark.newest_redis
def test_producer_with_recent_state_tiers_under_the_redis7_selector(acl_server, simulation_id, tmp_path):
    if server_version(acl_server.binary) < (7, 0, 0):
        pytest.skip("ACL selectors need Redis >= 7; the bundled 6.2 has none")
    # Given: the producer's line with the README's tier selector appended
    admin = redis.Redis.from_url(acl_server.url)
    password = new_password()
    create_user(admin, f"{readme_acl_line('simstream-producer')} {readme_tier_selector()}", password)
    url = acl_server.url_for("simstream-producer", password)

    # When: a simulation logs with recent_state=True
    logger = RedisBufferedDataLogger(simulation_id, url, namespace=NAMESPACE, recent_state=True,
                                     journal_dir=str(tmp_path / "journal"))
    produce_workload(logger, steps=5, agents=3)
    report = logger.close()

    # Then: records and tiers are written, and the producer still cannot delete or read the stream
    assert report.all_in_redis and report.complete, report
    states = RecentStates(admin, namespace=NAMESPACE).recent_states(simulation_id, "a1", n=3)
    assert [state["step_number"] for state in states] == [5, 4, 3]
    stream = f"{NAMESPACE}:{{{simulation_id}}}:stream"
    first_id = admin.xrange(stream, count=1)[0][0].decode()
    assert_producer_cannot_read_or_remove(redis.Redis.from_url(url), stream, first_id)
