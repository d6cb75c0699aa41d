"""The SQL side of simstream: the persist path (workers, their supervisor, the stream reader, the sink);
operator tools in ``consumer.ops``, benchmarks in ``consumer.bench``."""

from consumer.ops.health import HealthThresholds, verdict
from consumer.stream_status import StreamStatus, all_statuses, stream_status
from consumer.sink import Sink, WriteResult
from consumer.sink_pool import SinkPool
from consumer.supervisor import Supervisor
from consumer.worker import Worker, consumer_name

__all__ = ["HealthThresholds", "Sink", "SinkPool", "StreamStatus", "Supervisor", "Worker", "WriteResult",
           "all_statuses", "consumer_name", "stream_status", "verdict"]
