"""The `dicos` sink: one DICOS Threat Detection Report (TDR) per bag event.

Reads `{ns}:bags` (set SCANGUARD_DELIVERY__STREAMS to include "bags") and writes
`root/YYYY/MM/DD/tdr-{bag event id}.dcs`, once per event: the report is built in a
temporary file and linked into place, so a reader never sees half a report and a second
delivery finds it and leaves it alone. Its UIDs derive from the event id, so the report
is the same whichever delivery writes it. docs/DICOS.md lists every attribute written.

The report names every image instance of the bag it assessed in the Referenced Scan
Sequence (0008,1110), and one potential threat object (PTO) per ROI of each view that
is not clear, referenced to that view's image. A view that came in as a DICOS object is
named by its own SOP Class and Instance UIDs (`meta["dicos"]` of its decision event, read
back from `{ns}:results`); a JPEG/PNG view by Secondary Capture Image Storage and a UID
derived from its frame id.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DICOSThreatDetectionReportStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from shared.delivery.sinks import BagDelivery, SinkError
from shared.keys import check_id
from shared.schemas import BagEvent, BagView, DecisionEvent, Roi
from shared.settings import Settings
from shared.vocab import BagReason, Verdict

log = structlog.get_logger("scanguard.delivery")
DICOM = "application/dicom"
# Model label -> Threat Category (4010,1012) and its description (4010,1013). "PI" is the
# defined term for a prohibited item; a label not listed is reported as an ANOMALY.
THREAT_CATEGORIES: dict[str, tuple[str, str]] = {
    "gun": ("PI", "firearm"),
    "firearm": ("PI", "firearm"),
    "pistol": ("PI", "firearm"),
    "rifle": ("PI", "firearm"),
    "knife": ("PI", "bladed weapon"),
    "blade": ("PI", "bladed weapon"),
    "scissors": ("PI", "bladed weapon"),
    "explosive": ("EXPLOSIVE", "explosive"),
    "ied": ("EXPLOSIVE", "improvised explosive device"),
}
UNDETERMINED = ("ANOMALY", "undetermined: the model neither detected nor cleared this view")
# A bag closed at its deadline lacks views: the scan it was given is incomplete.
DEADLINE_ABORT_REASONS = ["TIMEOUT", "INCOMPLETE_SCAN"]
VERSION_CHARS = 40


@dataclass(frozen=True)
class ImageRef:
    """The image instance a view was decided on, as a report refers to it."""

    sop_class_uid: str
    sop_instance_uid: str
    rows: int
    columns: int
    study_instance_uid: str | None = None  # DICOS views only: the scan they belong to
    ooi_id: str | None = None
    ooi_issuer: str | None = None


def derived_image(view: BagView) -> ImageRef:
    """A view without DICOS identifiers: Secondary Capture and a UID from its frame id."""
    rows, columns = _size(view)
    uid = generate_uid(entropy_srcs=[view.frame_id])
    return ImageRef(SecondaryCaptureImageStorage, uid, rows, columns)


def dicos_image(view: BagView, decided: DecisionEvent) -> ImageRef | None:
    """The DICOS instance a view came from, from its decision event's `meta["dicos"]`."""
    ids = decided.meta.get("dicos")
    if not isinstance(ids, dict):
        return None
    sop_class, sop_instance = _uid(ids.get("sop_class_uid")), _uid(ids.get("sop_instance_uid"))
    if sop_class is None or sop_instance is None:
        return None
    rows, columns = _size(view)
    return ImageRef(
        sop_class,
        sop_instance,
        rows,
        columns,
        _uid(ids.get("study_instance_uid")),
        _text(ids.get("ooi_id")),
        _text(ids.get("ooi_issuer")),
    )


def _uid(value: object) -> str | None:
    return str(value) if isinstance(value, str) and UID(value).is_valid else None


def _text(value: object) -> str | None:
    """A single LO value (a backslash would split it in two), or None."""
    if not isinstance(value, str) or not value or not value.isprintable():
        return None
    return value.replace("\\", "/")[:64]


def _size(view: BagView) -> tuple[int, int]:
    """(rows, columns) of the view's image, from its original's artefact reference."""
    refs = sorted(view.artefacts, key=lambda ref: ref.kind != "original")
    return (refs[0].height, refs[0].width) if refs else (0, 0)


class DicosSink:
    """Threat Detection Reports in `root/YYYY/MM/DD/`, one file per bag event."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, event: BagEvent) -> Path:
        """The report's file, always inside the root.

        Raises:
            ValueError: the event id could not stand as a file name.
        """
        day = event.decided_at
        event_id = check_id(event.event_id, "event id")
        final = self.root / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}" / f"tdr-{event_id}.dcs"
        if not final.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"event {event_id!r} would be written outside {self.root}")
        return final

    def deliver_bag(self, delivery: BagDelivery) -> str:
        event = delivery.event
        final = self.path(event)
        if final.exists():
            return f"already written: {final}"
        images = {view.view: self._image(view, delivery) for view in event.views}
        report = tdr_dataset(event, images)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                report.save_as(f, enforce_file_format=True)
            try:
                os.link(staging, final)  # never replaces: a concurrent delivery may have won
            except FileExistsError:
                return f"already written: {final}"
        finally:
            os.unlink(staging)
        return f"TDR {report.AlarmDecision} with {report.NumberOfTotalObjects} PTOs in {final}"

    def _image(self, view: BagView, delivery: BagDelivery) -> ImageRef:
        original = next((ref for ref in view.artefacts if ref.kind == "original"), None)
        if original is None or original.content_type != DICOM:
            return derived_image(view)
        decided = delivery.view_event(view)
        if decided is None:
            raise SinkError(
                f"view {view.view} of bag {delivery.event.bag_id}: its decision event "
                f"{view.event_id} is not on the results stream, so the DICOS instance it "
                "came from cannot be named"
            )
        found = dicos_image(view, decided)
        if found is None:
            log.warning("dicos_ids_missing", bag_id=delivery.event.bag_id, view=view.view)
            return derived_image(view)
        return found


def dicos_from_settings(settings: Settings) -> DicosSink:
    return DicosSink(settings.delivery.dicos_dir)


# -- the report -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pto:
    view: BagView
    image: ImageRef
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (end-exclusive) inside the image
    roi: Roi | None  # None: the whole image stands for an undetermined view


def tdr_dataset(event: BagEvent, images: Mapping[int, ImageRef]) -> Dataset:
    """The TDR of one bag event; `images` holds the image instance of each decided view."""
    uid = generate_uid(entropy_srcs=["scanguard.tdr", event.event_id])
    ptos = list(_ptos(event, images))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DICOSThreatDetectionReportStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    decided_date, decided_time = _date_time(event.decided_at)
    scan_date, scan_time = _date_time(event.first_captured_at)
    refs = [images[view.view] for view in event.views]
    # SOP Common
    ds.SOPClassUID = DICOSThreatDetectionReportStorage
    ds.SOPInstanceUID = uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = decided_date, decided_time
    # Object of Inspection: the bag, as its images name it
    ds.PatientID = next((r.ooi_id for r in refs if r.ooi_id), event.bag_id[:64])
    ds.IssuerOfPatientID = next((r.ooi_issuer for r in refs if r.ooi_issuer), event.scanner_id)[:64]
    ds.TypeOfPatientID = "TEXT"
    ds.OOIType = "BAGGAGE"
    # General Scan: the images' scan, and every image instance the report assessed
    scans = {r.study_instance_uid for r in refs}
    ds.StudyInstanceUID = (
        scans.pop()
        if len(scans) == 1 and None not in scans
        else generate_uid(entropy_srcs=["scanguard.scan", event.bag_id])
    )
    ds.StudyDate, ds.StudyTime, ds.StudyID = scan_date, scan_time, ""
    ds.ScanType = "OPERATIONAL"
    ds.ReferencedStudySequence = [_instance(r) for r in refs]  # Referenced Scan Sequence
    # General Series and Equipment
    ds.Modality = "TDR"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["scanguard.tdr.series", event.event_id])
    ds.SeriesDate, ds.SeriesTime = decided_date, decided_time
    ds.Manufacturer = "scanguard"
    ds.ContentDate, ds.ContentTime = decided_date, decided_time
    ds.InstanceNumber = 1
    ds.DICOSVersion = "V03"
    _add_report(ds, event, ptos)
    return ds


def _add_report(ds: Dataset, event: BagEvent, ptos: list[_Pto]) -> None:
    """The Threat Detection Report module: the decision, its algorithm and its PTOs."""
    ds.TDRType = "MACHINE"
    model = event.model
    # Name and version: the model id and its checksum cut to 40 characters. A full 64-character
    # last value is padded to 65 bytes on disk, which pydicom then reports as over the LO limit.
    ds.ThreatDetectionAlgorithmAndVersion = (
        [model.id[:64], model.checksum[:VERSION_CHARS]] if model else ["scanguard", "unknown"]
    )
    ds.AlarmDecision = "CLEAR" if event.decision == Verdict.CLEAR else "ALARM"
    ds.AlarmDecisionTime = event.decided_at.astimezone(timezone.utc).strftime(
        "%Y%m%d%H%M%S.%f+0000"
    )
    if event.reason == BagReason.DEADLINE:
        ds.AbortFlag = "ABORT"
        ds.AbortReason = DEADLINE_ABORT_REASONS
    else:
        ds.AbortFlag = "SUCCESS"
    ds.NumberOfTotalObjects = len(ptos)
    ds.NumberOfAlarmObjects = len(ptos)  # only views that alarm give PTOs
    ds.TotalProcessingTime = max(0.0, float(event.latency_ms))  # ms, first capture to decision
    ds.ThreatSequence = [_threat_item(n, pto) for n, pto in enumerate(ptos, start=1)]


def _date_time(when: datetime) -> tuple[str, str]:
    utc = when.astimezone(timezone.utc)
    return utc.strftime("%Y%m%d"), utc.strftime("%H%M%S.%f")


def _instance(ref: ImageRef) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def _ptos(event: BagEvent, images: Mapping[int, ImageRef]) -> Iterator[_Pto]:
    """One PTO per ROI of each threat or undetermined view; the whole image for such a view
    without ROIs. Clear views give none: their attention assessed nothing as a threat."""
    for view in sorted(event.views, key=lambda v: v.view):
        if view.decision == Verdict.CLEAR:
            continue
        image = images[view.view]
        boxes = [(box, roi) for roi in view.rois if (box := _inside(roi, image)) is not None]
        if not boxes and image.rows > 0 and image.columns > 0:
            yield _Pto(view, image, (0, 0, image.columns, image.rows), None)
        for box, roi in boxes:
            yield _Pto(view, image, box, roi)


def _inside(roi: Roi, image: ImageRef) -> tuple[int, int, int, int] | None:
    """The ROI's box clipped to the image, or None if nothing of it is inside."""
    x0, y0 = max(0, roi.x), max(0, roi.y)
    x1, y1 = min(image.columns, roi.x + roi.w), min(image.rows, roi.y + roi.h)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _threat_item(number: int, pto: _Pto) -> Dataset:
    x0, y0, x1, y1 = pto.box
    voxels = Dataset()  # 2-D image: z = 0 and depth 0; an empty bitmap means every pixel
    voxels.ThreatROIBase = [float(x0), float(y0), 0.0]
    voxels.ThreatROIExtents = [float(x1 - x0), float(y1 - y0), 0.0]
    voxels.ThreatROIBitmap = b""
    representation = Dataset()
    representation.ReferencedInstanceSequence = [_instance(pto.image)]
    representation.ThreatROIVoxelSequence = [voxels]
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    representation.BoundingPolygon = [float(c) for x, y in corners for c in (x, y, 0)]
    representation.CenterOfPTO = [(x0 + x1) / 2.0, (y0 + y1) / 2.0, 0.0]
    if pto.roi is not None:
        representation.PTOLocationDescription = (
            f"view {pto.view.view}: attention peak {pto.roi.peak:.3f}, mean {pto.roi.mean:.3f}"
        )
    item = Dataset()
    item.PotentialThreatObjectID = number
    item.PTORepresentationSequence = [representation]
    item.ATDAssessmentSequence = list(_assessments(pto.view))
    return item


def _assessments(view: BagView) -> Iterator[Dataset]:
    """One assessment per class the view detected; UNKNOWN for an undetermined view."""
    found: list[tuple[str, str, str, float | None]] = []
    if view.decision == Verdict.THREAT:
        for detection in view.detections:
            category, description = THREAT_CATEGORIES.get(
                detection.label.lower(), ("ANOMALY", detection.label)
            )
            found.append((category, description, "THREAT", detection.probability))
    if not found and view.decision == Verdict.THREAT:  # a threat of no class: not expected
        found.append(("ANOMALY", "threat", "THREAT", None))
    if not found:
        found.append((*UNDETERMINED, "UNKNOWN", None))
    for category, description, flag, probability in found:
        item = Dataset()
        item.ThreatCategory = category
        item.ThreatCategoryDescription = description[:10240]
        item.ATDAbilityAssessment = "NO_INTERFERENCE"
        item.ATDAssessmentFlag = flag
        if probability is not None:
            item.ATDAssessmentProbability = min(1.0, max(0.0, float(probability)))
        yield item
