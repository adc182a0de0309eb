"""Ground truth of a real bag, where the line knows it: its views' frame meta.

Bag events carry no meta, but each view's decision event on `{ns}:results` carries its
frame's (the synthetic scanner writes the bag's class there as `label`, 0 = benign). The
station looks those events up when a verdict is given, so the supervisor report can count
false alarms on benign bags. The value stays server-side (in the verdict record); the
meta never reaches an operator (`present.strip_meta`).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from shared.keys import Keys
from shared.schemas import BagEvent

SKEW_MS = 60_000  # capture times come from the scanner's clock, entry ids from Redis's
PAGE = 500


def view_meta(
    client: redis.Redis, keys: Keys, bag: BagEvent, scan_max: int = 5_000
) -> dict[str, dict[str, Any]]:
    """Meta of the bag's views by event id, from their decision events on `{ns}:results`.

    Only the entries between the bag's first capture and its close are read (with
    `SKEW_MS` either side), at most `scan_max` of them; a raw substring match picks
    the views' events before any JSON is parsed.
    """
    wanted = {v.event_id: f'"event_id":"{v.event_id}"'.encode() for v in bag.views}
    low = int(bag.first_captured_at.timestamp() * 1000) - SKEW_MS
    high = int(bag.decided_at.timestamp() * 1000) + SKEW_MS
    found: dict[str, dict[str, Any]] = {}
    cursor, scanned = f"{max(low, 0)}-0", 0
    while len(found) < len(wanted) and scanned < scan_max:
        entries: Any = client.xrange(keys.results, min=cursor, max=str(high), count=PAGE)
        for _raw_id, fields in entries:
            raw = fields.get(b"event", b"")
            for event_id, needle in wanted.items():
                if needle in raw:
                    meta = json.loads(raw).get("meta")
                    found[event_id] = meta if isinstance(meta, dict) else {}
        scanned += len(entries)
        if len(entries) < PAGE:
            break
        cursor = "(" + entries[-1][0].decode()
    return found


def bag_truth(client: redis.Redis, keys: Keys, bag: BagEvent, meta_key: str) -> str:
    """ "threat" if any view's `meta_key` is a class other than 0, "benign" if every decided
    view's is 0, "" if the line does not know."""
    metas = view_meta(client, keys, bag)
    labels = [metas.get(v.event_id, {}).get(meta_key) for v in bag.views]
    known = [label for label in labels if isinstance(label, int) and not isinstance(label, bool)]
    if any(label != 0 for label in known):
        return "threat"
    if known and len(known) == len(labels):
        return "benign"
    return ""
