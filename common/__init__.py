"""Shared by producer and consumer: settings, record kinds, codec, keys, schema, connections."""

from common.codec import FORMAT_VERSION, Record, decode, make_encoder
from common.errors import (ConfigurationError, DatabaseUnavailable, ExitCode, GroupMissing, PermanentError,
                           PersistTimeout, RecordError, RedisUnavailable, SimstreamError, TransientError)
from common.keys import Keys
from common.masking import mask_secrets
from common.records import KINDS, RecordKind
from common.recent_state import RecentStates
from common.settings import ConsumerSettings, ProducerSettings
from common.tiers import RedisIMConfig, RedisSTMConfig, TierWriter
from common.workload import Mix

__all__ = [
    "FORMAT_VERSION", "KINDS", "ConfigurationError", "ConsumerSettings", "DatabaseUnavailable", "ExitCode",
    "GroupMissing", "Keys", "Mix", "PermanentError", "PersistTimeout", "ProducerSettings", "Record", "RecordError",
    "RecordKind",
    "RecentStates", "RedisIMConfig", "RedisSTMConfig", "RedisUnavailable", "SimstreamError", "TierWriter",
    "TransientError", "decode", "make_encoder", "mask_secrets",
]
