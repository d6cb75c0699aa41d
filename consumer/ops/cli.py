"""The ``simstream`` command: consume, status, demo, redis.

Every subcommand takes ``--redis-url`` (env ``SIMSTREAM_REDIS_URL``); those that write take
``--db`` (env ``SIMSTREAM_DB_URL``). Errors print one line and exit with a named code
(:class:`common.errors.ExitCode`), never a traceback.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
from pathlib import Path

import click
import redis
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from common.connections import (check_redis, check_sink_template, create_sink_engine, ensure_schema, redis_client,
                                simulation_db_url)
from consumer.ops.embedded_redis import EmbeddedRedis
from common.errors import ConfigurationError, ExitCode, SimstreamError
from common.failover import REDIS_ERRORS
from common.keys import Keys
from common.masking import mask_secrets
from common.settings import (DEFAULT_ABANDONED_AFTER_S, DEFAULT_DB_URL, DEFAULT_GROUP, DEFAULT_NAMESPACE,
                             ENV_ABANDONED_AFTER_S, ENV_DB_URL, ENV_GROUP, ENV_NAMESPACE, ENV_REDIS_CA_CERTS,
                             ENV_REDIS_URL, ENV_WAIT_FOR_SIMULATION_S, ConsumerSettings, is_per_simulation,
                             normalize_db_url, validate_db_url)
from consumer.logs import configure_logging

log = logging.getLogger(__name__)

_CONSUMER_DEFAULTS = ConsumerSettings()  # the flags' defaults, shown in --help: one source, the settings class

_redis_url_option = click.option("--redis-url", envvar=ENV_REDIS_URL, default=None,
                                  help=f"Redis URL (env {ENV_REDIS_URL}; default redis://127.0.0.1:6379/0).")
_redis_ca_option = click.option("--redis-ca-certs", envvar=ENV_REDIS_CA_CERTS, default=None,
                                type=click.Path(exists=True, dir_okay=False),
                                help=f"CA file a rediss:// server's certificate must be signed by (env "
                                     f"{ENV_REDIS_CA_CERTS}; or ssl_ca_certs=PATH in the URL).")


def redis_url_option(command):
    """``--redis-url`` and ``--redis-ca-certs``."""
    return _redis_url_option(_redis_ca_option(command))

namespace_option = click.option("--namespace", envvar=ENV_NAMESPACE, default=DEFAULT_NAMESPACE,
                                show_default=True, help=f"Key prefix in Redis (env {ENV_NAMESPACE}).")
db_option = click.option("--db", envvar=ENV_DB_URL, default=None,
                         help=f"SQLAlchemy URL or SQLite file path of the sink (env {ENV_DB_URL}; "
                              f"default {DEFAULT_DB_URL}).")


group_option = click.option("--group", envvar=ENV_GROUP, default=DEFAULT_GROUP, show_default=True,
                            help=f"Consumer group name (env {ENV_GROUP}).")


def abandoned_option(default):
    return click.option("--abandoned-after-s", type=click.FloatRange(min=0, min_open=True), default=default,
                        envvar=ENV_ABANDONED_AFTER_S, show_default=default is not None,
                        help="A simulation not complete whose producer has not been heard from for this long "
                             f"is abandoned: shown so by status, not waited for by --drain (env {ENV_ABANDONED_AFTER_S}"
                             + ("" if default else f"; default {DEFAULT_ABANDONED_AFTER_S:g}") + ").")


def _log_options(command):
    command = click.option("--log-json", is_flag=True, envvar="SIMSTREAM_LOG_JSON", show_envvar=True,
                           help="Log one JSON object per line.")(command)
    return click.option("--log-level", default="INFO", envvar="SIMSTREAM_LOG_LEVEL", show_default=True,
                        show_envvar=True,
                        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
                        help="Log level.")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simstream")
def cli() -> None:
    """simstream: stream simulation records through Redis into SQL, nothing lost or doubled."""


@cli.command()
@click.option("--processes", "-p", default=1, show_default=True, type=click.IntRange(1, 256),
              envvar="SIMSTREAM_PROCESSES", show_envvar=True, help="Worker processes to run.")
@redis_url_option
@db_option
@namespace_option
@group_option
@click.option("--batch-size", type=click.IntRange(1), default=_CONSUMER_DEFAULTS.batch_size,
              show_default=True, help="Stream entries per read (COUNT), each a record batch (up to the "
                                      "producers' entry_records records); one read is one transaction.")
@click.option("--block-ms", type=click.IntRange(1), default=_CONSUMER_DEFAULTS.block_ms,
              show_default=True, help="How long a read waits (BLOCK).")
@click.option("--claim-idle-ms", type=click.IntRange(0), default=_CONSUMER_DEFAULTS.claim_idle_ms,
              show_default=True, help="Claim entries other consumers have held this long.")
@click.option("--claim-interval-ms", type=click.IntRange(1), default=_CONSUMER_DEFAULTS.claim_interval_ms,
              show_default=True, help="How often to look for them.")
@click.option("--max-deliveries", type=click.IntRange(1), default=_CONSUMER_DEFAULTS.max_deliveries,
              show_default=True,
              help="Dead-letter an entry delivered more times than this.")
@click.option("--drain", is_flag=True,
              help="Exit 0 once every known simulation is complete (or abandoned) and persisted.")
@click.option("--wait-for-simulation-s", type=click.FloatRange(min=0), default=None,
              envvar=ENV_WAIT_FOR_SIMULATION_S,
              help="With --drain and no simulation yet: wait this long for one, then exit 1 (env "
                   f"{ENV_WAIT_FOR_SIMULATION_S}; default 60; 0: do not wait, nothing to drain exits 0).")
@abandoned_option(None)
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="With --drain: show records persisted of logged (a bar on a terminal, else lines).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, envvar="SIMSTREAM_METRICS_PORT",
              show_envvar=True, help="Serve Prometheus metrics on this port (default: off).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, envvar="SIMSTREAM_METRICS_HOST",
              show_envvar=True,
              help="Address the metrics endpoint listens on (0.0.0.0 for every interface).")
@click.option("--failing-after-ms", type=click.IntRange(0), default=None,
              help="For the metrics health gauge: retrying a database or Redis this long is "
                   "'sink-failing' / 'redis-failing' (default 10000).")
@_log_options
def consume(processes, redis_url, redis_ca_certs, db, namespace, group, batch_size, block_ms, claim_idle_ms,
            claim_interval_ms, max_deliveries, drain, wait_for_simulation_s, abandoned_after_s, progress,
            metrics_port, metrics_host, failing_after_ms, log_level, log_json) -> None:
    """Run consumer processes that persist every simulation stream to SQL."""
    from consumer.supervisor import Supervisor

    configure_logging(log_level, log_json)
    settings = ConsumerSettings.from_env(
        redis_url=redis_url, redis_ca_certs=redis_ca_certs, db_url=normalize_db_url(db) if db else None,
        namespace=namespace, group=group, batch_size=batch_size, block_ms=block_ms, claim_idle_ms=claim_idle_ms,
        claim_interval_ms=claim_interval_ms, max_deliveries=max_deliveries, drain=drain,
        wait_for_simulation_s=wait_for_simulation_s, abandoned_after_s=abandoned_after_s,
        failing_after_ms=failing_after_ms)
    preflight(settings)
    supervisor = Supervisor(settings, processes, log_level, log_json, metrics_port=metrics_port,
                            metrics_host=metrics_host, progress=progress)
    sys.exit(int(supervisor.run()))


def preflight(settings: ConsumerSettings) -> None:
    """Fail fast, with one line, if Redis does not answer or the database cannot be set up."""
    check_redis(redis_client(settings.redis_url), settings.redis_url)
    if is_per_simulation(settings.db_url):
        check_sink_template(settings.db_url)  # each simulation's file is created when first written
        return
    engine = create_sink_engine(settings.db_url, create_folder=False)  # a typo must not become folders
    try:
        ensure_schema(engine)
    finally:
        engine.dispose()


@cli.command()
@redis_url_option
@namespace_option
@group_option
@click.option("--db", envvar=ENV_DB_URL, default=None,
              help=f"The sink, to count dead letters (env {ENV_DB_URL}); without it they show as unknown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--watch", "watch_s", type=click.FloatRange(min=0.1), is_flag=False, flag_value=2.0, default=None,
              help="Refresh every SECONDS (default 2) until Ctrl-C.", metavar="[SECONDS]")
@click.option("--lag-threshold", type=click.IntRange(0), default=10_000, show_default=True,
              help="Backlog (records not yet persisted) above which an active group is 'lagging'.")
@click.option("--stuck-after-ms", type=click.IntRange(0), default=30_000, show_default=True,
              help="A group with backlog and no consumer seen for this long is 'stuck'.")
@click.option("--claim-idle-ms", type=click.IntRange(0), default=60_000, show_default=True,
              help="The consumers' --claim-idle-ms: a pending entry idle this long plus "
                   "--stuck-after-ms and not claimed is 'stuck'.")
@abandoned_option(DEFAULT_ABANDONED_AFTER_S)
@click.option("--failing-after-ms", type=click.IntRange(0), default=10_000, show_default=True,
              help="Consumers retrying a simulation's database or Redis this long make it "
                   "'sink-failing' or 'redis-failing'.")
def status(redis_url, redis_ca_certs, namespace, group, db, as_json, watch_s, lag_threshold, stuck_after_ms,
           claim_idle_ms, abandoned_after_s, failing_after_ms) -> None:
    """Show every simulation stream: state (running, complete, drained, abandoned, removed), length,
    persisted, lag, pending, consumers, dead letters, and a health verdict: ok, lagging, stuck,
    dead-letters, sink-unusable, sink-failing or redis-failing (see the README).
    """
    from consumer.ops.health import HealthThresholds
    from consumer.ops.status_view import print_report, status_report, watch

    settings = ConsumerSettings.from_env(redis_url=redis_url, redis_ca_certs=redis_ca_certs, namespace=namespace,
                                         group=group)
    client = redis_client(settings.redis_url)
    check_redis(client, settings.redis_url)
    thresholds = HealthThresholds(lag_threshold, stuck_after_ms, claim_idle_ms, abandoned_after_s,
                                  failing_after_ms=failing_after_ms)
    db_url = normalize_db_url(db) if db else None

    def build() -> dict:
        return status_report(client, Keys(settings.namespace), settings.group, db_url, thresholds)

    if watch_s is None:
        print_report(build(), as_json)
    else:
        watch(build, watch_s, as_json)


@cli.command()
@click.option("--agents", default=100, show_default=True, type=click.IntRange(1))
@click.option("--steps", default=200, show_default=True, type=click.IntRange(1))
@click.option("--consumers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--db", default="simstream-demo.db", show_default=True, envvar=ENV_DB_URL,
              help="SQLite file (or SQLAlchemy URL) to persist into.")
@redis_url_option
@click.option("--embedded-redis", is_flag=True,
              help="Always start a private Redis, even if one is configured or answers at the default.")
@_log_options
def demo(agents, steps, consumers, db, redis_url, redis_ca_certs, embedded_redis, log_level, log_json) -> None:
    """Run a synthetic simulation through Redis into SQL and check every table matches."""
    from consumer.ops.demo import run_demo

    configure_logging("WARNING" if log_level.upper() == "INFO" else log_level, log_json)
    sys.exit(int(run_demo(agents=agents, steps=steps, consumers=consumers, db_url=normalize_db_url(db),
                          redis_url=redis_url, embedded=embedded_redis, redis_ca_certs=redis_ca_certs)))


@cli.command()
@click.option("--records", default=250_000, show_default=True, type=click.IntRange(1000),
              help="Records in the mix (rounded up to whole steps of 100 agents, 20 resources).")
@click.option("--consumers", default="1,2", show_default=True,
              help="Consumer process counts to measure, comma-separated.")
@click.option("--out", "out_dir", default="bench-results", show_default=True, type=click.Path(file_okay=False),
              help="Folder for bench.json, bench.md and bench.png.")
@click.option("--db", default=None,
              help="Run the consumer rows on this database (e.g. postgresql+psycopg://...) in a fresh schema; "
                   "default: fresh SQLite files.")
def bench(records, consumers, out_dir, db) -> None:
    """Measure simstream against the machine's limits and the designs it replaces."""
    from consumer.bench import BenchOptions, run_bench

    configure_logging("WARNING")
    try:
        counts = tuple(sorted({int(part) for part in consumers.split(",") if part.strip()}))
    except ValueError:
        raise click.BadParameter(f"{consumers!r}: use process counts like 1,2", param_hint="--consumers") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{consumers!r}: use process counts like 1,2", param_hint="--consumers")
    db_url = validate_db_url(normalize_db_url(db)) if db else None
    sys.exit(int(run_bench(BenchOptions(records=records, consumers=counts, out_dir=Path(out_dir), db_url=db_url))))


@cli.group()
def dlq() -> None:
    """Inspect and re-drive dead letters (entries that could not become rows)."""


def _sink_engine(db, simulation=None):
    """The existing sink holding dead letters; dlq commands never create a database, a folder or
    a table (a sink without ``dead_letters`` simply has none)."""
    settings = ConsumerSettings.from_env(db_url=normalize_db_url(db) if db else None)
    if is_per_simulation(settings.db_url) and not simulation:
        raise ConfigurationError(f"--db {mask_secrets(settings.db_url)!r} holds one file per simulation; "
                                 "pass --simulation ID to choose which simulation's dead letters")
    url = simulation_db_url(settings.db_url, simulation or "")
    database = make_url(url).database
    if make_url(url).get_backend_name() == "sqlite" and not (database and Path(database).is_file()):
        if is_per_simulation(settings.db_url):
            # A simulation's own file exists once a consumer wrote to it: none yet, no dead letters.
            return create_engine("sqlite://")  # in memory, without tables: read as having none
        raise ConfigurationError(f"no database file at {database}: give the --db / {ENV_DB_URL} "
                                 "the consumers write to (dlq creates nothing)")
    return create_sink_engine(url, create_folder=False)


@dlq.command("list")
@db_option
@click.option("--simulation", default=None, help="Only this simulation's dead letters.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def dlq_list(db, simulation, limit, as_json) -> None:
    """List dead letters, newest first, with the reason each was rejected."""
    from consumer.ops.dead_letters import list_dead_letters

    letters = list_dead_letters(_sink_engine(db, simulation), simulation, limit)
    if as_json:
        click.echo(json.dumps(letters, indent=2, default=str))
        return
    for letter in letters:
        deliveries = "-" if letter["delivery_count"] is None else letter["delivery_count"]  # unknown: trimmed away
        click.echo(f"{letter['id']:>6}  {letter['simulation_id']}  {letter['entry_id']}  "
                   f"deliveries={deliveries}  {letter['error']}")
    click.echo(f"{len(letters)} dead letter(s)")


@dlq.command("retry")
@db_option
@redis_url_option
@namespace_option
@click.option("--simulation", default=None, help="Only this simulation's dead letters.")
@click.option("--id", "ids", multiple=True, type=int, help="Only these dead letters (repeatable).")
def dlq_retry(db, redis_url, redis_ca_certs, namespace, simulation, ids) -> None:
    """Put dead letters back into their streams for the consumers to try again."""
    from consumer.ops.dead_letters import retry_dead_letters

    settings = ConsumerSettings.from_env(redis_url=redis_url, redis_ca_certs=redis_ca_certs, namespace=namespace)
    client = redis_client(settings.redis_url)
    check_redis(client, settings.redis_url)
    result = retry_dead_letters(_sink_engine(db, simulation), client, Keys(settings.namespace), simulation, tuple(ids))
    click.echo(f"re-driven: {result.redriven}; skipped (payload lost): {result.skipped_without_payload}")


@dlq.command("purge")
@db_option
@click.option("--simulation", default=None, help="Only this simulation's dead letters.")
@click.option("--id", "ids", multiple=True, type=int, help="Only these dead letters (repeatable).")
@click.option("--yes", is_flag=True, required=True, help="Confirm: dead letters are deleted for good.")
def dlq_purge(db, simulation, ids, yes) -> None:
    """Delete dead letters for good."""
    from consumer.ops.dead_letters import purge_dead_letters

    click.echo(f"purged: {purge_dead_letters(_sink_engine(db, simulation), simulation, tuple(ids))}")


@cli.command("replay-journal")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@redis_url_option
@namespace_option
@click.option("--batch-size", type=click.IntRange(1), default=2000, show_default=True,
              help="Records per pipelined batch sent to Redis.")
def replay_journal_command(paths, redis_url, redis_ca_certs, namespace, batch_size) -> None:
    """Send producer journals (files, or folders of them) to Redis, in order, then delete them."""
    from common.journal import SUFFIX, replay_journal

    settings = ConsumerSettings.from_env(redis_url=redis_url, redis_ca_certs=redis_ca_certs, namespace=namespace)
    client = redis_client(settings.redis_url)
    check_redis(client, settings.redis_url)
    files = []
    for path in map(Path, paths):
        files += sorted(path.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime) if path.is_dir() else [path]
    for file in files:
        result = replay_journal(client, Keys(settings.namespace), file, batch_size)
        click.echo(f"{file}: {result.records} records sent" + (", simulation marked complete" if result.complete else ""))
    if not files:
        click.echo("no journals found")


@cli.command("redis")
@click.option("--dir", "data_dir", default=".simstream-redis", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the AOF and the log.")
@click.option("--port", default=6379, show_default=True, type=click.IntRange(1, 65535))
def redis_command(data_dir, port) -> None:
    """Run the embedded Redis server (127.0.0.1, AOF on) in the foreground."""
    server = EmbeddedRedis(Path(data_dir), port=port).start()
    # Forward the stop to the server and let wait() below return; redis-server shuts down cleanly.
    # Installed before the "listening" line, so a stop sent as soon as it is read is handled.
    signal.signal(signal.SIGTERM, lambda *_: server.process.terminate())
    signal.signal(signal.SIGINT, lambda *_: server.process.terminate())
    click.echo(f"Redis {server.binary} listening at {server.url} (data in {server.data_dir}); Ctrl-C stops it")
    server.process.wait()


def one_line(exc: BaseException) -> str:
    """``exc``'s message folded onto one line (drivers often add hints on lines of their own),
    without a closing period: a clause of ours may follow it after a ';'."""
    return " ".join(str(exc).split()).rstrip(".")


def _fail(message: str, code: int) -> None:
    """Print one error line on stderr (passwords masked) and exit with ``code``."""
    click.echo(f"simstream: error: {mask_secrets(message)}", err=True)
    sys.exit(int(code))


def main() -> None:
    """Console entry point: one line (passwords masked) and a named exit code for every failure."""
    try:
        cli.main(standalone_mode=False)
    except SimstreamError as exc:
        _fail(one_line(exc), exc.exit_code)
    except REDIS_ERRORS as exc:  # RedisError, and the cluster client's own errors
        _fail(f"Redis failed: {one_line(exc)}; check --redis-url and that the server is up", ExitCode.COULD_NOT_CONNECT)
    except SQLAlchemyError as exc:
        _fail(f"database failed: {one_line(getattr(exc, 'orig', None) or exc)}; check --db", ExitCode.COULD_NOT_CONNECT)
    except click.exceptions.Abort:
        click.echo("simstream: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except click.ClickException as exc:
        shown = io.StringIO()
        exc.show(file=shown)  # usage and message; an argument may be a URL with its password
        click.echo(mask_secrets(shown.getvalue()), err=True, nl=False)
        sys.exit(int(ExitCode.BAD_CONFIGURATION))
    except Exception as exc:  # a bug: still one line, and no password in it
        _fail(f"unexpected {type(exc).__name__}: {one_line(exc)}", ExitCode.FAILED)


if __name__ == "__main__":
    main()
