"""How the `dir:` source reads multi-view bags out of a folder's layout.

    scans/
      a.png              a one-view frame: no bag fields
      gate3_v0.png       bag "gate3", view 0 of 2: files named BAG_vK.EXT in the same
      gate3_v1.png       folder make one bag, its views in the order of K
      bag17/             bag "bag17": a sub-folder of files only, 1 to MAX_VIEWS of them;
        a-top.png          its files, sorted by name, are views 0, 1, ...
        b-side.png
      train/             a sub-folder with sub-folders of its own, or with more than
        ...              MAX_VIEWS files, is no bag: its files follow these rules again

A group of more than MAX_VIEWS `BAG_vK` files is no bag either (nor one named like a bag
folder beside it): its files stay one-view frames. Hidden files (a leading dot) are
ignored everywhere. A bag's id is its path below the folder with `/` as `:` (e.g.
`trays:bag17`); characters an id may not hold become `_`, with a short hash of the path
added so that two bags never share an id.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from producer.synthetic.pose import MAX_VIEWS
from shared.keys import check_id

_FLAT_VIEW = re.compile(r"(?P<bag>.+)_v(?P<k>\d+)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True)
class Unit:
    """What the folder source sends as one: a bag's view files, or one frame (bag None)."""

    bag: str | None
    paths: tuple[Path, ...]


def image_files(folder: Path) -> list[Path]:
    """The candidate image files below `folder`, sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def plan(folder: Path, paths: list[Path]) -> list[Unit]:
    """Group `paths` (sorted, below `folder`) into bags and single frames.

    Each unit stands where its first file stands in `paths`.
    """
    key_of = _bag_keys(folder, paths)
    members: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(key_of, key=lambda p: _view_order(p, key_of[p], folder)):
        members[key_of[path]].append(path)
    units: list[Unit] = []
    for path in paths:
        key = key_of.get(path)
        if key is None:
            units.append(Unit(None, (path,)))
        elif key in members:
            units.append(Unit(bag_id(key), tuple(members.pop(key))))
    return units


def _bag_keys(folder: Path, paths: list[Path]) -> dict[Path, str]:
    """Each file that belongs to a bag → the bag's path below `folder`."""
    in_folder: dict[Path, list[Path]] = defaultdict(list)
    for path in paths:
        if path.parent != folder:
            in_folder[path.parent].append(path)
    key_of = {
        path: leaf.relative_to(folder).as_posix()
        for leaf, files in in_folder.items()
        if len(files) <= MAX_VIEWS and not any(child.is_dir() for child in leaf.iterdir())
        for path in files
    }
    flat: dict[Path, list[Path]] = defaultdict(list)
    for path in paths:
        match = _FLAT_VIEW.fullmatch(path.stem)
        if path not in key_of and match is not None:
            flat[path.parent / match["bag"]].append(path)
    folder_bags = set(key_of.values())
    for bag, files in flat.items():
        key = bag.relative_to(folder).as_posix()
        if len(files) <= MAX_VIEWS and key not in folder_bags:  # a bag folder keeps its name
            key_of.update(dict.fromkeys(files, key))
    return key_of


def _view_order(path: Path, key: str, folder: Path) -> tuple[str, int, str]:
    """Sort key: by bag, then by K for BAG_vK files, by name in a bag folder."""
    match = _FLAT_VIEW.fullmatch(path.stem)
    flat = path.parent.relative_to(folder).as_posix() != key
    return (key, int(match["k"]) if flat and match is not None else 0, path.name)


def bag_id(path: str) -> str:
    """A safe id for a bag at `path` below the folder (see the module docstring)."""
    text = path.replace("/", ":")
    try:
        return check_id(text)
    except ValueError:
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        return f"{_UNSAFE.sub('_', text)[:100]}-{digest}"
