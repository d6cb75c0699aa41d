"""Redis with a password (ACL user, default user off) and Redis serving TLS only: records go from
producer to consumers to rows, exactly; a wrong password or an untrusted certificate is one line
naming the URL (password masked) and the cause, exit code 3.
"""

from __future__ import annotations

import os

import pytest
import redis

from producer import RedisBufferedDataLogger
from tests.conftest import Cli
from tests.helpers import assert_rows_match, drain_with_worker, produce_workload
from tests.secure_redis import AclUser, SecuredRedis, leaks, make_tls_files, new_password, tls_binary

pytestmark = pytest.mark.timeout(120)

APP_USER = "simstream-app"


@pytest.fixture
def password() -> str:
    return new_password()


@pytest.fixture
def acl_redis(redis_binary, tmp_path, password):
    """A Redis whose only user is APP_USER (all commands) and whose default user is off."""
    server = SecuredRedis(tmp_path / "acl-redis", redis_binary, [AclUser(APP_USER, password, ("~*", "&*", "+@all"))])
    yield server.start()
    server.stop()


@pytest.fixture
def tls_redis(tmp_path, password):
    """A Redis on a TLS port only (certificate from a CA made here), with APP_USER and no default user."""
    binary, reason = tls_binary()
    if binary is None:
        pytest.skip(reason)
    server = SecuredRedis(tmp_path / "tls-redis", binary, [AclUser(APP_USER, password, ("~*", "&*", "+@all"))],
                          tls=make_tls_files(tmp_path / "tls"))
    yield server.start()
    server.stop()


def cli_for(tmp_path, redis_url: str, db_url: str, namespace: str, **extra: str) -> Cli:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SIMSTREAM_")}
    return Cli({**env, "SIMSTREAM_REDIS_URL": redis_url, "SIMSTREAM_DB_URL": db_url,
                "SIMSTREAM_NAMESPACE": namespace, "PYTHONUNBUFFERED": "1", **extra}, tmp_path)


def assert_one_masked_line(result, url_without_password: str, cause: str, password: str) -> None:
    """Exit 3, one line on stderr naming the URL (password masked) and the cause; the password nowhere."""
    assert result.returncode == 3, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert url_without_password in line and cause in line.lower(), line
    assert not leaks(password, result.stdout + result.stderr)


def test_acl_user_with_the_default_user_off_runs_producer_to_rows(acl_redis, password, tmp_path, simulation_id,
                                                                   namespace, sqlite_url, sink_engine):
    # Given: a Redis that refuses clients without a password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_redis.url_for(None, None)).ping()

    # When: a simulation logs through a URL carrying the ACL user and password, and two consumer
    # processes (`simstream consume`) drain it through the same URL
    logger = RedisBufferedDataLogger(simulation_id, acl_redis.url, namespace=namespace)
    expected = produce_workload(logger, steps=10, agents=5)
    assert logger.close().all_in_redis
    result = cli_for(tmp_path, acl_redis.url, sqlite_url, namespace).run("consume", "--processes", "2", "--drain",
                                                                         "--no-progress", timeout=90)

    # Then: every row is in SQL exactly once, and the password was printed nowhere
    assert result.returncode == 0, result.stderr
    assert_rows_match(sink_engine, simulation_id, expected)
    assert not leaks(password, result.stdout + result.stderr)


@pytest.mark.newest_redis
def test_tls_only_redis_with_the_ca_in_the_url(tls_redis, tmp_path, simulation_id, namespace, sqlite_url,
                                               sink_engine, password):
    # Given: a Redis serving TLS only, and a URL naming the test's CA (?ssl_ca_certs=)
    assert tls_redis.url.startswith("rediss://") and "ssl_ca_certs=" in tls_redis.url

    # When: the producer logs and two consumer processes drain through that URL
    logger = RedisBufferedDataLogger(simulation_id, tls_redis.url, namespace=namespace)
    expected = produce_workload(logger, steps=10, agents=5)
    assert logger.close().all_in_redis
    result = cli_for(tmp_path, tls_redis.url, sqlite_url, namespace).run("consume", "--processes", "2", "--drain",
                                                                         "--no-progress", timeout=90)

    # Then: every row arrived, exactly once
    assert result.returncode == 0, result.stderr
    assert_rows_match(sink_engine, simulation_id, expected)
    assert not leaks(password, result.stdout + result.stderr)


@pytest.mark.newest_redis
def test_tls_only_redis_with_the_ca_as_a_setting(tls_redis, tmp_path, simulation_id, namespace, sqlite_url,
                                                 sink_engine, password):
    # Given: the URL without a CA, and the CA given as the redis_ca_certs setting
    url, ca = tls_redis.url_for(APP_USER, password, ca_in_url=False), str(tls_redis.tls.ca_cert)

    # When: the producer connects with the setting, `simstream status` with the flag, and a
    # worker with the setting
    logger = RedisBufferedDataLogger(simulation_id, url, namespace=namespace, redis_ca_certs=ca)
    expected = produce_workload(logger, steps=10, agents=5)
    assert logger.close().all_in_redis
    status = cli_for(tmp_path, url, sqlite_url, namespace).run("status", "--json", "--redis-ca-certs", ca)
    drain_with_worker(url, sqlite_url, namespace, name="tls-worker", redis_ca_certs=ca)  # asserts exit code 0

    # Then: status saw the simulation, and every row arrived
    assert status.returncode == 0 and simulation_id in status.stdout, status.stderr
    assert_rows_match(sink_engine, simulation_id, expected)


@pytest.mark.newest_redis
@pytest.mark.parametrize("command", [("status",), ("consume", "--drain"), ("demo", "--agents", "2", "--steps", "2")])
def test_a_wrong_redis_password_is_one_masked_line_and_exit_3(acl_redis, tmp_path, namespace, sqlite_url, command):
    # Given: the right user with a wrong password
    wrong = new_password()
    url = acl_redis.url_for(APP_USER, wrong)

    # When: a command connects
    result = cli_for(tmp_path, url, sqlite_url, namespace).run(*command, timeout=60)

    # Then: one line with the masked URL and Redis's reason, exit 3
    assert_one_masked_line(result, f"redis://{APP_USER}:***@127.0.0.1:{acl_redis.port}/0",
                           "invalid username-password pair", wrong)


@pytest.mark.newest_redis
@pytest.mark.parametrize("trust", ["another CA", "no CA"])
def test_an_untrusted_certificate_is_one_masked_line_and_exit_3(tls_redis, tmp_path, namespace, sqlite_url,
                                                                password, trust):
    # Given: a client that trusts another CA than the server's, or only the system's CAs
    url = tls_redis.url_for(APP_USER, password, ca_in_url=False)
    if trust == "another CA":
        url += f"?ssl_ca_certs={make_tls_files(tmp_path / 'other', 'other').ca_cert}"

    # When: `simstream status` connects
    result = cli_for(tmp_path, url, sqlite_url, namespace).run("status", timeout=60)

    # Then: one line with the masked URL and the certificate failure, exit 3
    assert_one_masked_line(result, f"rediss://{APP_USER}:***@127.0.0.1:{tls_redis.port}/0",
                           "certificate verify failed", password)
