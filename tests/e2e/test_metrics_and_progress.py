"""The metrics endpoint scraped over HTTP during a real run; drain progress; the run's summary line."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request
from collections import defaultdict

import psutil
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from common import schema
from consumer.ops.embedded_redis import free_port
from common.keys import Keys
from consumer.worker import consumer_name
from producer import RedisBufferedDataLogger
from tests.helpers import FAST, assert_rows_match, produce_workload, total_expected, wait_for


def scrape(port: int) -> dict[str, list]:
    """Samples by name: [(labels, value), ...]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def try_scrape(port: int):
    try:
        return scrape(port)
    except OSError:
        return None  # not listening yet


def rows_by_table(engine, simulation_id: str) -> dict[str, int]:
    counts = {}
    with engine.connect() as connection:
        for table in schema.DATA_TABLES:
            query = select(func.count()).select_from(table).where(table.c.simulation_id == simulation_id)
            counts[table.name] = connection.execute(query).scalar_one()
    return {name: count for name, count in counts.items() if count}


def persisted_by_table(samples) -> dict[str, int]:
    counts = defaultdict(int)
    for labels, value in samples.get("simstream_records_persisted_total", []):
        counts[labels["table"]] += int(value)
    return dict(counts)


def value(samples, name: str, **labels) -> float:
    [found] = [v for l, v in samples[name] if all(l.get(k) == v2 for k, v2 in labels.items())]
    return found


def worker_pids(supervisor) -> list[int]:
    return [child.pid for child in psutil.Process(supervisor.pid).children()
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE]


def test_metrics_endpoint_counts_match_the_rows_persisted(cli, redis_server, sink_engine, namespace,
                                                          simulation_id):
    # Given: a running simulation with one poison entry, and two consumers serving metrics
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=500)
    expected = produce_workload(logger, steps=20, agents=5)
    logger.flush_all_buffers()
    redis_server.client().xadd(Keys(namespace).stream(simulation_id), {b"r": b"\xc1"})
    port = free_port()
    consumer = cli.start("consume", "--processes", "2", "--metrics-port", str(port), *FAST)

    # When: the consumers have caught up (the endpoint says the backlog is 0)
    def caught_up():
        samples = try_scrape(port)
        backlog = samples and [v for l, v in samples["simstream_stream_backlog"] if l["simulation"] == simulation_id]
        return samples if backlog == [0] and samples.get("simstream_records_persisted_total") else None

    wait_for(caught_up, what="the consumers to catch up")
    samples = scrape(port)

    # Then: the workers' counters match the rows in SQL, table by table; the gauges match Redis and the sink
    assert_rows_match(sink_engine, simulation_id, expected)
    assert persisted_by_table(samples) == rows_by_table(sink_engine, simulation_id)
    assert sum(v for _, v in samples["simstream_dead_lettered_total"]) == 1
    assert value(samples, "simstream_dead_letters", simulation=simulation_id) == 1
    assert value(samples, "simstream_stream_health", simulation=simulation_id, health="dead-letters") == 1
    assert value(samples, "simstream_stream_lag", simulation=simulation_id) == 0
    assert value(samples, "simstream_stream_pending", simulation=simulation_id) == 0
    assert value(samples, "simstream_redis_up") == 1
    batches = sum(v for _, v in samples["simstream_batches_total"])
    assert batches >= 1 and sum(v for _, v in samples["simstream_commit_seconds_count"]) == batches
    assert all(v == 0 for _, v in samples["simstream_worker_restarts_total"])

    # When: a worker is killed; the supervisor restarts it
    victim = worker_pids(consumer)[0]
    psutil.Process(victim).kill()
    wait_for(lambda: sum(v for _, v in scrape(port)["simstream_worker_restarts_total"]) == 1,
             what="the restart to be counted")
    wait_for(lambda: len(worker_pids(consumer)) == 2, what="the replacement worker")

    # Then: the dead worker's counts are kept; the restart is counted for its consumer name
    samples = scrape(port)
    assert persisted_by_table(samples) == rows_by_table(sink_engine, simulation_id)
    restarted = {l["consumer"] for l, v in samples["simstream_worker_restarts_total"] if v == 1}
    assert restarted <= {consumer_name(0), consumer_name(1)} and len(restarted) == 1

    # When: the run is stopped
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(60) == 0

    # Then: one summary line for the whole run, with the same totals
    output = cli.output(consumer)
    [summary] = re.findall(r"supervisor\.summary .*", output)
    assert f"persisted={sum(persisted_by_table(samples).values())} " in summary
    assert "dead_lettered=1 " in summary and "restarts=1 " in summary
    logger.close()


def test_drain_prints_progress_lines_when_not_on_a_terminal(cli, redis_server, sink_engine, namespace,
                                                            simulation_id):
    # Given: a finished simulation
    logger = RedisBufferedDataLogger(simulation_id, redis_server.url, namespace=namespace, batch_size=500)
    expected = produce_workload(logger, steps=10, agents=4)
    report = logger.close()
    assert report.complete

    # When: consume --drain runs with its output going to a file
    result = cli.run("consume", "--drain", *FAST)

    # Then: plain progress lines, the last one saying everything logged was persisted
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("persisted ")]
    assert lines, result.stdout
    done, total = map(int, re.match(r"persisted (\d+)/(\d+) \(100%\)", lines[-1]).groups())
    assert done == total == report.logged
    assert "\x1b[" not in result.stdout  # no terminal control codes in a file
    assert_rows_match(sink_engine, simulation_id, expected)
    # and the whole run's summary line is there: the sum of the workers' own summaries
    [summary] = re.findall(r"supervisor\.summary .*", result.stderr)
    workers = [int(n) for n in re.findall(r"worker\.summary .*persisted=(\d+)", result.stderr)]
    assert workers and f"persisted={sum(workers)} " in summary and sum(workers) >= total_expected(expected)


def test_a_metrics_port_in_use_is_one_line_and_a_named_exit_code(cli):
    # Given: the port is taken
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()

        # When: a consumer is asked to serve metrics there
        result = cli.run("consume", "--metrics-port", str(taken.getsockname()[1]))

    # Then: bad configuration, one line saying what to do, nothing started
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "choose another --metrics-port" in result.stderr
