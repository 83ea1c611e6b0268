"""Parsing Redis XREADGROUP replies (shared by the change trigger and the notices reader)."""

from __future__ import annotations

from typing import Any


def stream_entries(resp: Any) -> list[tuple[str, dict | None]]:
    """(id, fields) pairs of a one-stream XREADGROUP reply, RESP2 (list) or RESP3 (dict)."""
    if not resp:
        return []
    streams = resp.values() if isinstance(resp, dict) else (entries for _, entries in resp)
    out = []
    for entries in streams:
        for entry in entries or []:
            msg_id = entry[0]
            out.append((msg_id.decode() if isinstance(msg_id, bytes) else str(msg_id), entry[1]))
    return out
