"""The producer side of ``simstream bench``, run as its own process: ``python -m producer.bench``.

``--mode flat`` logs the whole record mix as fast as the simulation thread can, timing every
``log()`` call, then waits until every record is in Redis; it prints one JSON line with the
``log()`` percentiles (µs), the sustained records/s into Redis and when the first ``log()`` call
and the flush ended (``time.monotonic()``). With ``--wait-go`` it first starts the simulation
(its stream exists), prints ``{"ready": true}`` and waits for ``go`` on stdin, so the bench can
start consumers before the first record. ``--mode paced`` (which always waits for ``go``) logs step by
step at ``--rate`` records/s after reading ``go`` on stdin (the consumers are up by then) and
prints when each step's last record was logged (``time.monotonic()``, shared by the processes of
one machine), so the bench can measure log() -> committed row latency. With ``--hold-after N`` it
prints ``{"held": N}`` once step N is in Redis and waits for another line on stdin before it goes
on: the bench arms a worker's crash there, so the kill always falls inside the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from array import array
from typing import Any

from common.workload import Mix, mix_records, step_records
from producer.stream_producer import StreamProducer


def _percentile(ordered: list[int], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1000


def timer_overhead_ns(samples: int = 10_000) -> float:
    """What one pair of ``perf_counter_ns()`` calls adds to each timed ``log()``."""
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(samples):
        clock()
        clock()
    return (clock() - start) / samples


def run_flat(producer: StreamProducer, mix: Mix) -> dict[str, Any]:
    """Log every record as fast as possible; time each call and the wait until all are in Redis."""
    records = list(mix_records(mix))
    durations = array("q", bytes(8 * len(records)))
    gc.collect()
    gc.freeze()  # the pre-built records are the bench's, not the simulation's: keep them out of GC passes
    clock, log = time.perf_counter_ns, producer.log
    first_log_at = time.monotonic()
    started = time.perf_counter()
    for index, (kind, fields) in enumerate(records):
        before = clock()
        log(kind, **fields)
        durations[index] = clock() - before
    logged = time.perf_counter()
    report = producer.flush()
    in_redis = time.perf_counter()
    in_redis_at = time.monotonic()
    ordered = sorted(durations)
    return {
        "records": len(records), "in_redis": report.in_redis - 1,  # minus the producer's own start record
        "log_p50_us": _percentile(ordered, 0.50), "log_p99_us": _percentile(ordered, 0.99),
        "log_p999_us": _percentile(ordered, 0.999), "log_max_us": ordered[-1] / 1000,
        "log_mean_us": sum(ordered) / len(ordered) / 1000, "timer_overhead_ns": timer_overhead_ns(),
        "loop_s": logged - started, "into_redis_s": in_redis - started,
        "sustained_rps": len(records) / (in_redis - started),
        "first_log_at": first_log_at, "in_redis_at": in_redis_at,
    }


def run_paced(producer: StreamProducer, mix: Mix, rate: float, hold_after: int | None = None) -> dict[str, Any]:
    """Log step by step at ``rate`` records/s; note when each step's last record was logged.
    After step ``hold_after``, flush, say so on stdout and wait for a line on stdin."""
    log, step_times = producer.log, []
    started = time.monotonic()
    for step in range(1, mix.steps + 1):
        for kind, fields in step_records(mix, step):
            log(kind, **fields)
        step_times.append(time.monotonic())
        if step == hold_after:
            producer.flush()
            print(json.dumps({"held": step}), flush=True)
            sys.stdin.readline()
            started += time.monotonic() - step_times[-1]  # the pace resumes from here
        pause = started + step * mix.per_step / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    report = producer.flush()
    return {"records": mix.total, "in_redis": report.in_redis - 1, "started": started,
            "finished": time.monotonic(), "step_times": step_times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--simulation-id", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--resources", type=int, default=20)
    parser.add_argument("--mode", choices=("flat", "paced"), default="flat")
    parser.add_argument("--rate", type=float, default=50_000.0, help="records/s in --mode paced")
    parser.add_argument("--hold-after", type=int, default=None,
                        help="--mode paced: after this step, wait for a line on stdin")
    parser.add_argument("--wait-go", action="store_true",
                        help="--mode flat: start the simulation, then wait for 'go' on stdin before logging")
    args = parser.parse_args(argv)
    mix = Mix(args.records, args.agents, args.resources)
    with tempfile.TemporaryDirectory(prefix="simstream-bench-journal-") as journal_dir:
        # No consumers drain the stream while the flat run fills it: keep the backlog policy out of
        # the way (it would spill to the journal past the high-water mark) so the run measures sending.
        producer = StreamProducer(args.simulation_id, args.redis_url, namespace=args.namespace,
                                  journal_dir=journal_dir, high_water_records=max(1_000_000, 2 * mix.total))
        if args.mode == "paced" or args.wait_go:
            producer.flush()  # the start record: the stream exists, consumers can join its group
            print(json.dumps({"ready": True}), flush=True)
            sys.stdin.readline()  # "go": the consumers are reading
        if args.mode == "paced":
            result = run_paced(producer, mix, args.rate, args.hold_after)
        else:
            result = run_flat(producer, mix)
        report = producer.close()
        result["complete"] = report.complete
    print(json.dumps(result), flush=True)
    return 0 if report.all_in_redis else 1


if __name__ == "__main__":
    sys.exit(main())
