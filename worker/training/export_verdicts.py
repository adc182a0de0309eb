"""Operators' bag verdicts on `{ns}:verdicts` as a labelled image folder for training.

    python -m worker.training.export_verdicts --out DIR [--redis-url URL] [--namespace NS]
                                              [--since ID] [--limit N]

Each view of a reviewed bag becomes `DIR/<label>/<bag_id>-<view>.<ext>`: the original
frame bytes exactly as the scanner sent them (JPEG or PNG, never re-encoded), plus one
line in `DIR/manifest.jsonl`. The folder is what `imagefolder:DIR` reads for training and
evaluation (one sub-folder per card label).

Where the pieces come from: a verdict record (`scanguard.bag-verdict/1`, written by the
station's `verdicts.record`) names the bag and its review entry; that entry on
`{ns}:review` holds the bag event with every view, its boxes and its machine trace; the
originals are `{ns}:artefact:<view event id>:original`, kept `review_ttl_s` after the bag
closed. Export within that time: later, views are counted as missing originals.

Labels:

- `clear` → every view under `benign`.
- `search` → each view with at least one box the operator confirmed goes under the class
  the station printed on that view's boxes: the view's most probable threat class at its
  last forward (the page's own rule, so the label is the class the operator looked at
  when confirming). All boxes of a view carry that one class; when views of one bag show
  different classes, each view goes under its own. Views of a searched bag with no
  confirmed box are left out (the threat may be hidden there, so they are not benign),
  as are searched bags with no confirmed box at all.
- TIP bags (threat image projection, the station's own test bags) are never exported.
- Anything else on the stream (the alert monitor's verdicts, an unknown decision) is
  skipped and counted.

A run never writes a (bag, view) twice: views already in the manifest are counted as
already exported, and a second verdict on the same bag that names another label is
skipped as a conflict (the first verdict stands). A file is written under a temporary
name and renamed, then its manifest line is appended; a run cut off between the two
finds the file and adds only the line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from shared.console.station import parse_bag
from shared.console.verdicts import BAG_VERDICT_SCHEMA, Decision, RoiMark
from shared.images import JPEG, PNG
from shared.keys import Keys
from shared.logs import configure_logging
from shared.redis_conn import redis_from_settings
from shared.schemas import BagEvent, BagView
from shared.settings import SettingsError, load_settings

BENIGN = "benign"  # the card label of class 0
MANIFEST = "manifest.jsonl"
PAGE = 500  # verdict entries read per round trip
EXTENSIONS = {JPEG: ".jpg", PNG: ".png"}
STREAM_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
SAFE_LABEL = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # no path parts, no dot files

# Why a verdict or a view was not written (the keys of `Tally.skipped`).
OTHER_KIND = "other_kind"  # not a bag verdict, or a decision this export does not know
UNREADABLE = "unreadable"  # a bag verdict whose ROI marks do not parse
UNCONFIRMED = "search_unconfirmed"  # a searched bag with no confirmed box
UNCONFIRMED_VIEW = "unconfirmed_view"  # a view of a searched bag with no confirmed box
NO_CLASS = "no_class"  # confirmed boxes on a view the station showed no class for
NOT_IMAGE = "not_jpeg_or_png"  # e.g. a DICOS original: not what an image folder holds
CONFLICT = "conflicting_label"  # a view exported before under another label
BAD_LABEL = "bad_label"  # a class name that cannot be a folder name


@dataclass(frozen=True)
class ViewLabel:
    """One view of a verdict's bag, with the label it is filed under."""

    view: BagView
    label: str
    rois: list[dict[str, Any]]  # the confirmed boxes, in frame pixels


@dataclass
class Tally:
    """What a run did, for the summary line."""

    verdicts: int = 0
    written: Counter[str] = field(default_factory=Counter)
    already: int = 0
    tip: int = 0
    missing: int = 0  # views whose original has expired
    bags_gone: int = 0  # verdicts whose bag event is no longer on the review stream
    skipped: Counter[str] = field(default_factory=Counter)  # verdicts or views, by reason
    last_id: str = ""

    def summary(self) -> str:
        """One line: what was written per label, and every count of what was not."""
        written = ", ".join(f"{label} {n}" for label, n in sorted(self.written.items()))
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
        return (
            f"{self.verdicts} verdicts read (last id {self.last_id or '-'}):"
            f" written {sum(self.written.values())} ({written or 'none'}),"
            f" already exported {self.already}, TIP excluded {self.tip},"
            f" views with expired originals {self.missing},"
            f" bags gone from review {self.bags_gone},"
            f" skipped {sum(self.skipped.values())} ({skipped or 'none'})"
        )


class Manifest:
    """`manifest.jsonl`: one line per exported file, and the labels already given."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.labels: dict[tuple[str, int], str] = {}
        if path.exists():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    row = json.loads(line)
                    self.labels[(row["bag_id"], int(row["view"]))] = row["label"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(
                        f"{path}:{number} is not a manifest line; repair or remove it"
                    ) from None

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, separators=(",", ":")) + "\n"
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line)  # one write per line: a cut-off run leaves whole lines
        self.labels[(row["bag_id"], row["view"])] = row["label"]


def shown_class(bag: BagEvent, view: BagView) -> str | None:
    """The class the station prints on a view's boxes: the most probable threat class at the
    view's last forward (the first on a tie), or None where it has no trace."""
    model = bag.model or view.model
    if not view.trace:
        return None
    last = view.trace[-1]
    best: tuple[str, float] | None = None
    for label in model.labels[1:]:
        p = last.get(label)
        if p is not None and (best is None or p > best[1]):
            best = (label, p)
    return best[0] if best else None


def confirmed_boxes(record: dict[str, str], bag: BagEvent) -> dict[int, list[dict[str, Any]]]:
    """Confirmed boxes by view index; marks naming a box the bag does not have are ignored.

    Raises:
        ValueError: the record's `rois` field is not a list of ROI marks.
    """
    marks = json.loads(record.get("rois") or "[]")
    if not isinstance(marks, list):
        raise ValueError("rois is not a list")
    views = {v.view: v for v in bag.views}
    boxes: dict[int, list[dict[str, Any]]] = {}
    for raw in marks:
        mark = RoiMark.model_validate(raw)
        view = views.get(mark.view)
        if mark.mark != "confirm" or view is None or mark.roi >= len(view.rois):
            continue
        boxes.setdefault(mark.view, []).append(
            {"roi": mark.roi, **view.rois[mark.roi].model_dump()}
        )
    return boxes


def label_views(record: dict[str, str], bag: BagEvent, tally: Tally) -> list[ViewLabel]:
    """The views of a (non-TIP) bag verdict to export, with their labels (see the module
    docstring); what is left out is counted in `tally`."""
    if record.get("decision") == Decision.CLEAR:
        return [ViewLabel(view, BENIGN, []) for view in bag.views]
    boxes = confirmed_boxes(record, bag)
    if not boxes:
        tally.skipped[UNCONFIRMED] += 1
        return []
    found = []
    for view in bag.views:
        label = shown_class(bag, view) if view.view in boxes else None
        if view.view not in boxes:
            tally.skipped[UNCONFIRMED_VIEW] += 1
        elif label is None:
            tally.skipped[NO_CLASS] += 1
        else:
            found.append(ViewLabel(view, label, boxes[view.view]))
    return found


def review_bag(client: redis.Redis, keys: Keys, record: dict[str, str]) -> BagEvent | None:
    """The bag event a verdict was given on, from its review entry (None once trimmed)."""
    entry_id = record.get("review_entry_id", "")
    if not STREAM_ID.fullmatch(entry_id):
        return None
    found: Any = client.xrange(keys.review, min=entry_id, max=entry_id, count=1)
    bag = parse_bag(found[0][1]) if found else None
    return bag if bag is not None and bag.bag_id == record.get("bag_id") else None


def verdict_entries(
    client: redis.Redis, keys: Keys, since: str, limit: int | None
) -> Iterator[tuple[str, dict[str, str]]]:
    """Entries of `{ns}:verdicts` from `since` (inclusive), oldest first, at most `limit`."""
    cursor, left = since, limit
    while left is None or left > 0:
        count = PAGE if left is None else min(PAGE, left)
        entries: Any = client.xrange(keys.verdicts, min=cursor, max="+", count=count)
        for raw_id, fields in entries:
            yield (
                raw_id.decode(),
                {k.decode(): v.decode(errors="replace") for k, v in fields.items()},
            )
        if len(entries) < count:
            return
        left = None if left is None else left - len(entries)
        cursor = "(" + entries[-1][0].decode()


def manifest_row(
    entry_id: str, record: dict[str, str], bag: BagEvent, item: ViewLabel, file: str
) -> dict[str, Any]:
    return {
        "file": file,
        "bag_id": bag.bag_id,
        "view": item.view.view,
        "label": item.label,
        "verdict_id": entry_id,
        "decision": record.get("decision", ""),
        "operator": record.get("operator", ""),
        "pool": record.get("pool", ""),
        "decided_at": record.get("decided_at", ""),
        "scanner_id": bag.scanner_id,
        "event_id": item.view.event_id,
        "model_id": record.get("model_id", ""),
        "rois": item.rois,
    }


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name, so a file is there whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_bytes(data)
    os.replace(partial, path)


class Exporter:
    """Fills one image folder from one namespace's verdicts."""

    def __init__(self, client: redis.Redis, keys: Keys, out: Path) -> None:
        self.client = client
        self.keys = keys
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(out / MANIFEST)
        self.tally = Tally()

    def run(self, since: str = "-", limit: int | None = None) -> Tally:
        """Export the verdicts from `since` (a stream id, inclusive) on, at most `limit` of
        them; the tally of what was written, already there, left out or missing."""
        for entry_id, record in verdict_entries(self.client, self.keys, since, limit):
            self.tally.verdicts += 1
            self.tally.last_id = entry_id
            self.verdict(entry_id, record)
        return self.tally

    def verdict(self, entry_id: str, record: dict[str, str]) -> None:
        """Export one verdict entry, or count why not."""
        tally = self.tally
        if record.get("schema") != BAG_VERDICT_SCHEMA or record.get("decision") not in (
            Decision.CLEAR,
            Decision.SEARCH,
        ):
            tally.skipped[OTHER_KIND] += 1
            return
        if record.get("tip") == "1":
            tally.tip += 1
            return
        bag = review_bag(self.client, self.keys, record)
        if bag is None:
            tally.bags_gone += 1
            return
        try:
            items = label_views(record, bag, tally)
        except ValueError:  # bad JSON or a bad mark (pydantic's ValidationError is one)
            tally.skipped[UNREADABLE] += 1
            return
        self.write(entry_id, record, bag, self.new_views(bag, items))

    def new_views(self, bag: BagEvent, items: list[ViewLabel]) -> list[tuple[ViewLabel, Path]]:
        """The labelled views the folder does not hold yet, each with its file (relative)."""
        todo = []
        for item in items:
            given = self.manifest.labels.get((bag.bag_id, item.view.view))
            original = next((a for a in item.view.artefacts if a.kind == "original"), None)
            if given == item.label:
                self.tally.already += 1
            elif given is not None:
                self.tally.skipped[CONFLICT] += 1
            elif original is None or original.content_type not in EXTENSIONS:
                self.tally.skipped[NOT_IMAGE] += 1
            elif not SAFE_LABEL.fullmatch(item.label):
                self.tally.skipped[BAD_LABEL] += 1
            else:
                name = f"{bag.bag_id}-{item.view.view}{EXTENSIONS[original.content_type]}"
                todo.append((item, Path(item.label) / name))
        return todo

    def write(
        self,
        entry_id: str,
        record: dict[str, str],
        bag: BagEvent,
        todo: list[tuple[ViewLabel, Path]],
    ) -> None:
        """Fetch the originals of `todo` in one round trip; write each file, then its line."""
        if not todo:
            return
        pipe = self.client.pipeline(transaction=False)
        for item, _file in todo:
            pipe.get(self.keys.artefact(item.view.event_id, "original"))
        for (item, file), data in zip(todo, pipe.execute(), strict=True):
            path = self.out / file
            if not path.exists():  # present: a run cut off before its manifest line
                if data is None:
                    self.tally.missing += 1
                    continue
                write_file(path, data)
            self.manifest.append(manifest_row(entry_id, record, bag, item, file.as_posix()))
            self.tally.written[item.label] += 1


def export(
    client: redis.Redis, keys: Keys, out: Path, since: str = "-", limit: int | None = None
) -> Tally:
    """Export the verdicts from `since` (inclusive) on, at most `limit`, into `out`.

    Raises:
        ValueError: `out` holds a manifest with a line that is not one of ours.
    """
    return Exporter(client, keys, out).run(since, limit)


def stream_id(text: str) -> str:
    """An argparse type: a stream id `ms-seq`, a bare `ms`, or `-` (the start)."""
    if text != "-" and not STREAM_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a stream id (<ms>-<seq> or <ms>)")
    return text


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.training.export_verdicts",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--out", type=Path, required=True, help="the image folder to fill")
    parser.add_argument("--redis-url", help="overrides SCANGUARD_REDIS_URL")
    parser.add_argument("--namespace", help="overrides SCANGUARD_NAMESPACE")
    parser.add_argument(
        "--since",
        type=stream_id,
        default="-",
        help="first verdict entry id to read (inclusive; a bare ms time works); default: all",
    )
    parser.add_argument("--limit", type=positive, help="read at most this many verdict entries")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"redis_url": args.redis_url, "namespace": args.namespace}
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url is None:
        # An embedded server starts empty: there would be nothing to export.
        print(
            "error: set SCANGUARD_REDIS_URL (or --redis-url) to the line's Redis", file=sys.stderr
        )
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        with redis_from_settings(settings) as client:
            tally = export(client, Keys(settings.namespace), args.out, args.since, args.limit)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"error: cannot read Redis: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # an unreadable manifest
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {tally.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
