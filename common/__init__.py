"""Shared by producer and consumer: settings, record kinds, codec, keys, schema, connections.

Its public names include the record-batch API, the wire format of the streams: ``BatchEncoder``
lays records out as rows and packs them into entries, ``append_entries`` appends them to a
simulation's stream with its bookkeeping, and ``decode_entry`` reads an entry back as rows (in
``row_columns`` order) with a ``RowMaker`` for the simulation's layout (``layout_named``).
"""

from common.codec import (FORMAT_VERSION, BatchEncoder, DecodedEntry, EncodedBatch, Record, decode, decode_entry,
                          make_encoder)
from common.errors import (ConfigurationError, DatabaseUnavailable, ExitCode, GroupMissing, PermanentError,
                           PersistTimeout, RecordError, RedisUnavailable, SenderFailed, SimstreamError, TransientError)
from common.keys import Keys
from common.layouts import layout_named
from common.masking import mask_secrets
from common.records import KINDS, RecordKind
from common.recent_state import RecentStates
from common.rows import RowMaker, row_columns
from common.settings import ConsumerSettings, ProducerSettings
from common.stream_append import append_entries
from common.tiers import RedisIMConfig, RedisSTMConfig, TierWriter
from common.workload import Mix

__all__ = [
    "FORMAT_VERSION", "KINDS", "BatchEncoder", "ConfigurationError", "ConsumerSettings", "DatabaseUnavailable",
    "DecodedEntry", "EncodedBatch", "ExitCode", "GroupMissing", "Keys", "Mix", "PermanentError", "PersistTimeout",
    "ProducerSettings", "RecentStates", "Record", "RecordError", "RecordKind", "RedisIMConfig", "RedisSTMConfig",
    "RedisUnavailable", "RowMaker", "SenderFailed", "SimstreamError", "TierWriter", "TransientError",
    "append_entries", "decode", "decode_entry", "layout_named", "make_encoder", "mask_secrets", "row_columns",
]
