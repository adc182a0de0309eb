"""DICOS DX files in and out: the `dicos:` source, and the synthetic scanner's export.

The source sends each object as received (content type `application/dicom`); workers
decode it, so a bad object is dead-lettered by a worker with its reason, and the original
kept for review is the scanner's own object. Bag and view come from the objects'
attributes (docs/DICOS.md):

- bag: DX objects with the same Object of Inspection ID (0010,0020) and the same scan,
  Study Instance UID (0020,000D); the bag id is the OOI ID (made safe as an id; with a
  short hash of the scan added when one OOI was scanned more than once);
- view: the objects of a bag ordered by Series View (6100,0024), then Instance Number
  (0020,0013), then SOP Instance UID; `views` is how many the bag has.

Objects that are not DX, or not readable as DICOM at all, go out as one-view frames so
that the workers dead-letter them with a reason instead of the source dropping them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DICOSDigitalXRayImageStorageForPresentation,
    DICOSDigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    generate_uid,
)

from producer.layout import bag_id as safe_id

log = structlog.get_logger(__name__)

DX_SOP_CLASSES = frozenset(
    {DICOSDigitalXRayImageStorageForPresentation, DICOSDigitalXRayImageStorageForProcessing}
)
# DICOS attributes pydicom's (DICOM) dictionary does not hold, by tag.
SERIES_VIEW = 0x61000024  # (6100,0024) US: view of this series in a multi-view scan
SERIES_VIEW_DESCRIPTION = 0x61000026  # (6100,0026) LO
NUMBER_OF_VIEWS = 0x61000028  # (6100,0028) US: views of the scan (General Scan module)
INSTANCE_NUMBER = 0x00200013
SUFFIXES = frozenset({".dcs", ".dcm", ".dicom", ".dicos"})
_UNREADABLE = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, IndexError)


@dataclass(frozen=True)
class DicosHeader:
    """What the source reads of one object (its header only, never its pixels)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    ooi_id: str
    ooi_issuer: str
    series_view: int | None
    view_description: str
    instance_number: int | None
    number_of_views: int | None

    @property
    def is_dx(self) -> bool:
        return self.sop_class_uid in DX_SOP_CLASSES and bool(self.study_instance_uid)

    def as_meta(self) -> dict[str, Any]:
        """The identifiers that travel with the frame as `meta["dicos"]`."""
        return {
            "sop_class_uid": self.sop_class_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "ooi_id": self.ooi_id,
            "ooi_issuer": self.ooi_issuer,
            "series_view": self.series_view,
            "view_description": self.view_description,
        }


def read_header(path: Path) -> DicosHeader | None:
    """The header of a Part-10 file, or None if it cannot be read as DICOM."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return DicosHeader(
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            ooi_id=str(ds.get("PatientID", "") or "").strip(),
            ooi_issuer=str(ds.get("IssuerOfPatientID", "") or "").strip(),
            series_view=_number(ds, SERIES_VIEW),
            view_description=str(ds[SERIES_VIEW_DESCRIPTION].value or "")
            if SERIES_VIEW_DESCRIPTION in ds
            else "",
            instance_number=_number(ds, INSTANCE_NUMBER),
            number_of_views=_number(ds, NUMBER_OF_VIEWS),
        )
    except _UNREADABLE as exc:
        log.warning("dicos_header_unreadable", path=str(path), error=str(exc))
        return None


def _number(ds: Dataset, tag: int) -> int | None:
    """An integer attribute, or None when absent, empty or not a number."""
    value: Any = ds[tag].value if tag in ds else None
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, eq=False)
class DicosObject:
    """One object to send: its bytes as read, its meta, and its place in a bag (or none)."""

    data: bytes
    meta: dict[str, Any]
    bag_id: str | None = None
    view: int | None = None
    views: int | None = None


@dataclass(frozen=True)
class _Unit:
    """One bag's objects in view order, or one object sent alone (bag None)."""

    bag: str | None
    members: tuple[tuple[Path, DicosHeader | None], ...]


class DicosFiles:
    """DICOS objects from a Part-10 file or a folder (recursively), optionally forever.

    In a folder, files named *.dcs/.dcm/.dicom/.dicos or carrying the Part-10 marker are
    read; anything else is skipped. Looping, round n > 0 suffixes each bag id with `.r<n>`.
    """

    def __init__(self, path: str | Path, loop: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"DICOS path {str(self.path)!r} does not exist")
        self.loop = loop

    def paths(self) -> list[Path]:
        """The DICOS files: the file itself, or the candidates below the folder by path."""
        if self.path.is_file():
            return [self.path]
        found = sorted(
            p for p in self.path.rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        chosen = [p for p in found if p.suffix.lower() in SUFFIXES or _has_marker(p)]
        if len(chosen) < len(found):
            log.info("files_skipped", count=len(found) - len(chosen), reason="not DICOM")
        return chosen

    def __iter__(self) -> Iterator[DicosObject]:
        paths = self.paths()
        if not paths:
            raise ValueError(f"{str(self.path)!r} holds no DICOS files")
        units = plan([(path, read_header(path)) for path in paths])
        rounds = 0
        while True:
            for unit in units:
                bag = unit.bag if unit.bag is None or rounds == 0 else f"{unit.bag}.r{rounds}"
                for view, (path, header) in enumerate(unit.members):
                    yield self._object(path, header, rounds, bag, view, len(unit.members))
            rounds += 1
            if not self.loop:
                return

    def _object(
        self,
        path: Path,
        header: DicosHeader | None,
        rounds: int,
        bag: str | None,
        view: int,
        views: int,
    ) -> DicosObject:
        base = self.path if self.path.is_dir() else self.path.parent
        meta: dict[str, Any] = {
            "source": "dicos",
            "path": path.relative_to(base).as_posix(),
            "round": rounds,
        }
        if header is not None:
            meta["dicos"] = header.as_meta()
        if bag is None:
            return DicosObject(path.read_bytes(), meta)
        return DicosObject(path.read_bytes(), meta, bag, view, views)


def _has_marker(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def plan(found: list[tuple[Path, DicosHeader | None]]) -> list[_Unit]:
    """Group objects into bags (DX of one OOI and scan) in view order; others stand alone.

    Each unit stands where its first file stands in `found`.
    """
    scans: dict[tuple[str, str], list[tuple[Path, DicosHeader]]] = defaultdict(list)
    for path, header in found:
        if header is not None and header.is_dx:
            scans[(header.ooi_id, header.study_instance_uid)].append((path, header))
    names = _bag_ids(list(scans))
    units: list[_Unit] = []
    for path, header in found:
        if header is None or not header.is_dx:
            units.append(_Unit(None, ((path, header),)))
            continue
        key = (header.ooi_id, header.study_instance_uid)
        if key not in scans:
            continue  # its bag is already planned
        members = sorted(scans.pop(key), key=lambda m: _view_order(m[1], m[0]))
        declared = members[0][1].number_of_views
        if declared is not None and declared != len(members):
            log.warning("views_disagree", bag=names[key], declared=declared, found=len(members))
        units.append(_Unit(names[key], tuple((p, h) for p, h in members)))
    return units


def _view_order(header: DicosHeader, path: Path) -> tuple[int, int, str, str]:
    missing = 1 << 31  # objects without the attribute come after those with it
    return (
        missing if header.series_view is None else header.series_view,
        missing if header.instance_number is None else header.instance_number,
        header.sop_instance_uid,
        str(path),
    )


def _bag_ids(scans: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A safe bag id per (OOI ID, scan): the OOI ID, or the scan UID when it has none."""
    base = {key: safe_id(key[0] or key[1]) for key in scans}
    uses: dict[str, int] = defaultdict(int)
    for name in base.values():
        uses[name] += 1
    return {
        key: name
        if uses[name] == 1
        else f"{name}.{hashlib.sha256(key[1].encode()).hexdigest()[:8]}"
        for key, name in base.items()
    }


# -- export ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DxView:
    """One view to write as a DICOS DX object, with the ids that tie it to its bag."""

    rgb: np.ndarray  # (H, W, 3) uint8
    ooi_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    view: int  # 0-based; written as Series View (6100,0024) = view + 1
    views: int
    view_name: str
    captured_at: datetime


def dx_dataset(v: DxView, issuer: str = "scanguard-synthetic") -> Dataset:
    """A DICOS DX (for presentation) dataset of `v`: RGB, 8 bits, uncompressed."""
    if v.rgb.dtype != np.uint8 or v.rgb.ndim != 3 or v.rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB view, got {v.rgb.dtype} {v.rgb.shape}")
    sop_class = DICOSDigitalXRayImageStorageForPresentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(v.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    when = v.captured_at.astimezone(timezone.utc)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    # SOP Common, Object of Inspection, General Scan, General Series, Equipment.
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = v.sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.PatientID = v.ooi_id[:64]  # OOI ID
    ds.IssuerOfPatientID = issuer  # OOI ID Assigning Authority
    ds.TypeOfPatientID = "TEXT"  # OOI ID Type
    ds.OOIType = "BAGGAGE"
    ds.StudyInstanceUID = v.study_instance_uid  # Scan Instance UID
    ds.StudyDate, ds.StudyTime, ds.StudyID = date, time, ""
    ds.ScanType = "OPERATIONAL"
    ds.add_new(NUMBER_OF_VIEWS, "US", v.views)
    ds.Modality = "XRAY"  # as the DICOS reference toolkit writes its DX objects
    ds.SeriesInstanceUID = v.series_instance_uid
    ds.SeriesNumber = v.view + 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.add_new(SERIES_VIEW, "US", v.view + 1)
    ds.add_new(SERIES_VIEW_DESCRIPTION, "LO", v.view_name[:64])
    ds.AcquisitionStatus = "SUCCESSFUL"
    ds.Manufacturer = "scanguard"
    ds.ManufacturerModelName = "synthetic dual-view scanner"
    ds.DICOSVersion = "V03"
    # DX image: one RGB frame of 8 bits per sample, as the scanner rendered it.
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceNumber = v.view + 1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(v.rgb.shape[0]), int(v.rgb.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(v.rgb).tobytes()
    return ds


def write_dicos(ds: Dataset, path: Path) -> None:
    """Write `ds` as a Part-10 file at `path`, atomically (a temporary file renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            ds.save_as(f, enforce_file_format=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def export_synthetic(
    out: Path,
    domain: str,
    seed: int,
    views: int,
    count: int,
    size: tuple[int, int] | None = None,
    start: int = 0,
) -> list[Path]:
    """Write synthetic bags `start` .. `start + count - 1` as DICOS DX files, one per view.

    A bag is `out/<ooi>/v<k>-<name>.dcs` with OOI ID `syn-<domain>-<seed>-<index>`; its
    UIDs derive from (domain, seed, index), so exporting again writes the same objects.
    """
    from producer.synthetic import SyntheticBagScanner  # numpy-only; loaded when used

    options = {} if size is None else {"size": size}
    scanner = SyntheticBagScanner(domain, seed, views=views, **options)
    captured = datetime.now(timezone.utc)
    written: list[Path] = []
    for index in range(start, start + count):
        bag = scanner.bag(index)
        ooi = f"syn-{domain}-{seed}-{index}"
        study = generate_uid(entropy_srcs=["scanguard.synthetic", ooi])
        for view in bag.views:
            ids = [ooi, str(view.view)]
            dx = DxView(
                rgb=np.ascontiguousarray(view.image),
                ooi_id=ooi,
                study_instance_uid=study,
                series_instance_uid=generate_uid(entropy_srcs=["scanguard.series", *ids]),
                sop_instance_uid=generate_uid(entropy_srcs=["scanguard.dx", *ids]),
                view=view.view,
                views=len(bag.views),
                view_name=view.name,
                captured_at=captured,
            )
            path = out / ooi / f"v{view.view}-{view.name}.dcs"
            write_dicos(dx_dataset(dx), path)
            written.append(path)
    return written
