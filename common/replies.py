"""Redis replies as text: one helper for the bytes-or-str idiom.

simstream's clients keep ``decode_responses`` off (payloads are binary msgpack), so ids, names
and hash fields come back as bytes; a RESP3 or cluster client, or a reply Lua built, may give str.
"""

from __future__ import annotations

from typing import Any


def text(value: Any) -> Any:
    """``value`` as str if it is bytes (UTF-8), else unchanged (None, ints and str stay as they are)."""
    return value.decode() if isinstance(value, (bytes, bytearray)) else value


def text_dict(reply: dict) -> dict[str, Any]:
    """A hash or info reply with its keys and values as text."""
    return {text(key): text(value) for key, value in reply.items()}


def as_bytes(value: bytes | str) -> bytes:
    """An id or key as bytes (for building a command argument such as an exclusive ``(id``)."""
    return value if isinstance(value, bytes) else value.encode()
