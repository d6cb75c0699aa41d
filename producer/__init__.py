"""The simulation side of simstream: log records in microseconds, stream them to Redis."""

from producer.data_logger import RedisBufferedDataLogger
from producer.stream_producer import FlushReport, StreamProducer

__all__ = ["FlushReport", "RedisBufferedDataLogger", "StreamProducer"]
