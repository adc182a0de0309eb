"""DICOS in and out: DX objects through the dicos: source and the workers, one TDR per bag.

Objects here are built with pydicom from the standard's attributes; none is hand-encoded.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
import redis
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DICOSCTImageStorage,
    DICOSDigitalXRayImageStorageForPresentation,
    DICOSDigitalXRayImageStorageForProcessing,
    DICOSThreatDetectionReportStorage,
    ExplicitVRLittleEndian,
    JPEGLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from producer.cli import main as producer_main
from producer.dicos import NUMBER_OF_VIEWS, SERIES_VIEW, export_synthetic
from producer.producer import Producer
from producer.sources import parse_source
from producer.synthetic import SyntheticBagScanner
from shared.delivery.dicos import DicosSink, derived_image, tdr_dataset
from shared.delivery.dispatcher import Dispatcher
from shared.delivery.sinks import BagDelivery
from shared.images import sniff_content_type
from shared.keys import Keys
from shared.schemas import ArtefactRef, BagEvent, BagView, Detection, ModelRef, Roi
from shared.settings import load_settings
from tests.pipeline_fixtures import ERASING, events
from tests.test_delivery import delivery_env, dispatch, run_rq_workers
from worker.service.dicos import DicosError, decode_dicos

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
SIZE = (128, 96)  # synthetic views, width x height


# -- objects built from the standard's attributes (not by the exporter) ------------------


def dx(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    ooi: str = "BAG-0001",
    scan: str | None = None,
    series_view: int | None = None,
    sop_class: str = DICOSDigitalXRayImageStorageForProcessing,
    **attributes: object,
) -> Dataset:
    """A DICOS DX object: OOI, scan, series and image attributes around `pixels`."""
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.PatientID, ds.IssuerOfPatientID, ds.TypeOfPatientID = ooi, "TEST-AIRPORT", "TEXT"
    ds.OOIType = "BAGGAGE"
    ds.StudyInstanceUID = scan or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    if series_view is not None:
        ds.add_new(SERIES_VIEW, "US", series_view)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(part10(ds))
    return path


def ramp(rows: int, cols: int, top: int) -> np.ndarray:
    """(rows, cols) uint16 values spread over 0..top."""
    return (
        np.arange(rows * cols, dtype=np.float64).reshape(rows, cols) * top / (rows * cols)
    ).astype(np.uint16)


# -- decoding ------------------------------------------------------------------------------


def slow_window(value: float, center: float, width: float) -> int:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, one value at a time, rounded half to even."""
    if value <= center - 0.5 - (width - 1) / 2:
        return 0
    if value > center - 0.5 + (width - 1) / 2:
        return 255
    return int(np.rint(((value - (center - 0.5)) / (width - 1) + 0.5) * 255))


def test_a_part10_object_is_sniffed_as_dicom():
    """Bytes with "DICM" after the 128-byte preamble are application/dicom; others are not."""
    data = part10(dx(np.zeros((4, 4), np.uint8)))
    assert sniff_content_type(data) == "application/dicom"
    assert sniff_content_type(b"\0" * 128 + b"DICX") is None


def test_the_window_matches_the_standard_formula_exactly():
    """A 12-bit MONOCHROME2 object through its rescale and window equals the slow per-pixel
    transcription of the standard's LINEAR window; tolerance 0, both round half to even."""
    stored = ramp(40, 50, 4095)
    ds = dx(
        stored,
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=3000,
        WindowWidth=2001,
    )
    image = decode_dicos(part10(ds), max_pixels=10**6)
    expected = np.vectorize(lambda v: slow_window(2.0 * v - 100.0, 3000.0, 2001.0))(stored)
    assert image.rgb.shape == (40, 50, 3) and image.rgb.dtype == np.uint8
    assert np.array_equal(image.rgb[..., 0], expected)
    assert np.array_equal(image.rgb[..., 0], image.rgb[..., 2])
    assert (image.sop_class_uid, image.ooi_id) == (ds.SOPClassUID, "BAG-0001")


def test_monochrome1_is_inverted_through_its_voi_lut():
    """A MONOCHROME1 object with a VOI LUT Sequence shows LUT(value) inverted: the standard's
    MONOCHROME1 has low values white."""
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4)
    lut = Dataset()
    lut.LUTDescriptor = [16, 0, 8]  # 16 entries from value 0, 8-bit output
    lut.add_new(0x00283006, "US", [min(255, 17 * n) for n in range(16)])  # LUT Data
    ds = dx(stored, photometric="MONOCHROME1", bits_stored=4, VOILUTSequence=[lut])
    grey = decode_dicos(part10(ds), max_pixels=10**6).rgb[..., 1]
    assert np.array_equal(grey, 255 - np.minimum(255, 17 * stored).astype(np.uint8))


def test_no_voi_uses_the_stored_range_and_rgb_passes_unchanged():
    """Without a window, 16 stored bits map 0..65535 onto 0..255; an RGB object's pixels are
    the image as they are."""
    grey = decode_dicos(part10(dx(ramp(8, 8, 65535))), 10**6).rgb[..., 0]
    assert np.array_equal(grey, np.rint(ramp(8, 8, 65535) / 257.0).astype(np.uint8))
    colour = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode_dicos(part10(dx(colour, photometric="RGB")), 10**6).rgb, colour)


def test_an_object_over_the_pixel_limit_is_refused_before_decoding():
    """Rows × Columns over the limit is a `too_large` refusal read from the header alone."""
    with pytest.raises(DicosError, match="pixel limit") as refused:
        decode_dicos(part10(dx(np.zeros((100, 100), np.uint8))), max_pixels=5_000)
    assert refused.value.kind == "too_large"


def test_exported_views_decode_to_the_scanner_pixels(tmp_path):
    """The export writes one lossless RGB DX object per view; decoding gives back the
    synthetic scanner's pixels exactly, with one OOI and scan per bag and the view in
    Series View (6100,0024)."""
    paths = export_synthetic(tmp_path, "target", 3, views=2, count=2, size=SIZE)
    scanner = SyntheticBagScanner("target", 3, size=SIZE, views=2)
    assert len(paths) == 4
    for path in paths:
        ds = pydicom.dcmread(path)
        index, view = int(ds.PatientID.rsplit("-", 1)[1]), int(ds[SERIES_VIEW].value) - 1
        assert ds.SOPClassUID == DICOSDigitalXRayImageStorageForPresentation
        assert ds[NUMBER_OF_VIEWS].value == 2
        image = decode_dicos(path.read_bytes(), 10**6).rgb
        assert np.array_equal(image, scanner.bag(index).views[view].image)
    scans = Counter(pydicom.dcmread(p).StudyInstanceUID for p in paths)
    assert sorted(scans.values()) == [2, 2]


def test_export_cli_writes_files_and_refuses_other_sources(tmp_path, capsys):
    """`python -m producer export` writes count × views files; a non-synthetic source is an
    argument error."""
    argv = ["export", "--source", "synthetic:source", "--views", "2", "--count", "2"]
    assert producer_main([*argv, "--size", "64x64", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 4
    assert len(list(tmp_path.rglob("*.dcs"))) == 4
    assert producer_main(["export", "--source", "dir:/tmp", "--out", str(tmp_path)]) == 2


# -- reports, built directly ------------------------------------------------------------


def bag_view(
    view: int,
    decision: str,
    rois: list[Roi] = (),
    detections: list[Detection] = (),
    content_type: str = "image/png",
) -> BagView:
    original = ArtefactRef(
        kind="original",
        key=f"k{view}",
        content_type=content_type,
        bytes=10,
        width=128,
        height=96,
        expires_at=T0 + timedelta(days=1),
    )
    return BagView(
        view=view,
        frame_id=f"lane-1:run:bag-v{view}",
        entry_id=f"{view + 1}-0",
        event_id=f"ev-{view}",
        captured_at=T0,
        decision=decision,
        detections=list(detections),
        trace=[],
        iterations=1,
        rois=list(rois),
        artefacts=[original],
        model=ModelRef(id="tiny", checksum="c" * 64, labels=["benign", "gun", "knife"]),
    )


def bag_event(views: list[BagView], decision: str, reason: str, expected: int = 2) -> BagEvent:
    return BagEvent(
        event_id="bag-ev-1",
        bag_id="lane-1:run:bag",
        scanner_id="lane-1",
        decision=decision,
        reason=reason,
        classes=[],
        views=views,
        views_expected=expected,
        missing_views=[v for v in range(expected) if v not in {w.view for w in views}],
        first_captured_at=T0,
        decided_at=T0 + timedelta(milliseconds=250),
        latency_ms=250.0,
        model=views[0].model if views else None,
        closed_by="w1",
    )


def delivered(event: BagEvent, root: Path) -> tuple[str, Dataset]:
    delivery = BagDelivery(event, event.to_json(), "d1", lambda view: None)
    summary = DicosSink(root).deliver_bag(delivery)
    return summary, pydicom.dcmread(DicosSink(root).path(event))


def test_a_threat_view_gives_a_pto_per_roi_with_each_detected_class(tmp_path):
    """ALARM: each ROI of the threat view is a PTO inside its image, one assessment per class
    (gun → firearm, knife → bladed weapon); an undetermined view without ROIs is one
    whole-image UNKNOWN PTO; the clear view gives none but is referenced."""
    rois = [
        Roi(x=100, y=-5, w=60, h=40, peak=1.0, mean=0.7),
        Roi(x=1, y=2, w=3, h=4, peak=0.6, mean=0.5),
    ]
    found = [
        Detection(class_id=1, label="gun", probability=0.91),
        Detection(class_id=2, label="knife", probability=0.7),
    ]
    views = [
        bag_view(0, "threat", rois, found),
        bag_view(1, "undetermined"),
        bag_view(2, "clear", [Roi(x=0, y=0, w=9, h=9, peak=1.0, mean=1.0)]),
    ]
    summary, ds = delivered(bag_event(views, "threat", "all_views", expected=3), tmp_path)
    assert summary.startswith("TDR ALARM with 3 PTOs")
    assert ds.SOPClassUID == DICOSThreatDetectionReportStorage and ds.Modality == "TDR"
    assert (ds.TDRType, ds.AlarmDecision, ds.AbortFlag) == ("MACHINE", "ALARM", "SUCCESS")
    assert list(ds.ThreatDetectionAlgorithmAndVersion) == ["tiny", "c" * 40]
    derived = [generate_uid(entropy_srcs=[v.frame_id]) for v in views]
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedStudySequence] == derived
    assert {i.ReferencedSOPClassUID for i in ds.ReferencedStudySequence} == {
        SecondaryCaptureImageStorage
    }
    first, second, whole = ds.ThreatSequence
    region = first.PTORepresentationSequence[0]
    assert region.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == derived[0]
    voxels = region.ThreatROIVoxelSequence[0]
    assert list(voxels.ThreatROIBase) == [100.0, 0.0, 0.0]  # clipped to the 128 x 96 image
    assert list(voxels.ThreatROIExtents) == [28.0, 35.0, 0.0]
    assert [
        (a.ThreatCategory, a.ThreatCategoryDescription, a.ATDAssessmentFlag)
        for a in first.ATDAssessmentSequence
    ] == [
        ("PI", "firearm", "THREAT"),
        ("PI", "bladed weapon", "THREAT"),
    ]
    assert first.ATDAssessmentSequence[0].ATDAssessmentProbability == pytest.approx(0.91)
    assert second.PotentialThreatObjectID == 2
    unknown = whole.PTORepresentationSequence[0]
    assert unknown.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == derived[1]
    assert list(unknown.ThreatROIVoxelSequence[0].ThreatROIExtents) == [128.0, 96.0, 0.0]
    assert whole.ATDAssessmentSequence[0].ATDAssessmentFlag == "UNKNOWN"
    assert ds.NumberOfTotalObjects == 3


def test_a_deadline_close_aborts_and_a_clear_bag_names_its_images(tmp_path):
    """A bag closed at its deadline is ALARM with the abort flag and its reasons; a clear
    bag is CLEAR, has no PTO, and still names every image it assessed. A second delivery
    writes nothing."""
    late = bag_event([bag_view(0, "clear")], "undetermined", "deadline")
    _, ds = delivered(late, tmp_path / "late")
    assert (ds.AlarmDecision, ds.AbortFlag, list(ds.AbortReason)) == (
        "ALARM",
        "ABORT",
        ["TIMEOUT", "INCOMPLETE_SCAN"],
    )
    clear = bag_event([bag_view(0, "clear"), bag_view(1, "clear")], "clear", "all_views")
    _, ds = delivered(clear, tmp_path / "clear")
    assert (ds.AlarmDecision, ds.NumberOfTotalObjects, "ThreatSequence" in ds) == ("CLEAR", 0, True)
    assert len(ds.ThreatSequence) == 0 and len(ds.ReferencedStudySequence) == 2
    again, _ = delivered(clear, tmp_path / "clear")
    assert again.startswith("already written")
    images = {view.view: derived_image(view) for view in clear.views}
    assert tdr_dataset(clear, images).SOPInstanceUID == ds.SOPInstanceUID  # the same report


def test_the_dispatcher_refuses_a_bag_sink_without_the_bags_stream():
    """Configured for alerts only, the dicos sink is a start-up error naming the setting
    (nothing is read: the client never connects)."""
    settings = load_settings(delivery={"sinks": ["dicos"], "streams": ["alerts"]})
    with pytest.raises(ValueError, match="SCANGUARD_DELIVERY__STREAMS"):
        Dispatcher(settings, redis.Redis(port=1))


# -- the pipeline on a real redis-server ------------------------------------------------


def decide(redis_server, keys: Keys, make_worker, folder: Path) -> None:
    """Send every object below `folder` with the dicos: source, then decide them all."""
    client = redis_server.client()
    worker = make_worker({"namespace": keys.namespace, "erasing": ERASING}, client)
    Producer(client, keys, "lane-1").run(parse_source(f"dicos:{folder}"))
    assert worker.run(burst=True) == 0


@pytest.mark.redis
@pytest.mark.slow
def test_synthetic_bags_round_trip_to_reports(
    redis_server, keys, make_worker, tmp_path, monkeypatch
):
    """Synthetic bags → DICOS DX files → dicos: source → workers → bag events → dicos sink:
    one TDR per bag, of the TDR SOP class, naming exactly the bag's input images, its
    regions inside them, its alarm decision the bag's."""
    folder = tmp_path / "in"
    argv = ["export", "--source", "synthetic:target", "--views", "2", "--count", "6"]
    assert producer_main([*argv, "--size", "128x96", "--seed", "5", "--out", str(folder)]) == 0
    inputs = {p: pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcs"))}
    decide(redis_server, keys, make_worker, folder)
    client = redis_server.client()
    bags = {
        b.bag_id: b
        for b in (BagEvent.model_validate_json(f[b"event"]) for _, f in client.xrange(keys.bags))
    }
    assert len(bags) == 6 and client.xlen(keys.dead) == 0

    env = delivery_env(
        redis_server,
        keys,
        tmp_path,
        sinks='["dicos"]',
        streams='["bags"]',
        dicos_dir=str(tmp_path / "tdr"),
    )
    assert dispatch(redis_server, env, monkeypatch).enqueued == 6
    run_rq_workers(redis_server, env)

    reports = [pydicom.dcmread(p) for p in sorted((tmp_path / "tdr").rglob("*.dcs"))]
    assert len(reports) == 6
    by_ooi: dict[str, list[Dataset]] = {}
    for ds in inputs.values():
        by_ooi.setdefault(ds.PatientID, []).append(ds)
    decisions = {"threat": "ALARM", "undetermined": "ALARM", "clear": "CLEAR"}
    alarms = 0
    for report in reports:
        assert report.SOPClassUID == DICOSThreatDetectionReportStorage
        images = {ds.SOPInstanceUID: ds for ds in by_ooi[report.PatientID]}
        named = [item.ReferencedSOPInstanceUID for item in report.ReferencedStudySequence]
        assert sorted(named) == sorted(images)
        assert report.StudyInstanceUID == next(iter(images.values())).StudyInstanceUID
        bag = next(b for b in bags.values() if b.bag_id.endswith(f":{report.PatientID}"))
        assert report.AlarmDecision == decisions[bag.decision]
        alarms += report.AlarmDecision == "ALARM"
        for pto in report.get("ThreatSequence", []):
            region = pto.PTORepresentationSequence[0]
            image = images[region.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID]
            assert region.ReferencedInstanceSequence[0].ReferencedSOPClassUID == image.SOPClassUID
            x, y, _ = region.ThreatROIVoxelSequence[0].ThreatROIBase
            w, h, _ = region.ThreatROIVoxelSequence[0].ThreatROIExtents
            assert min(x, y) >= 0 and min(w, h) > 0
            assert x + w <= image.Columns and y + h <= image.Rows
    assert alarms > 0, "no bag alarmed: the PTO checks above saw nothing"


@pytest.mark.redis
def test_an_independently_written_dx_is_accepted_and_decided(
    redis_server, keys, make_worker, tmp_path
):
    """DX objects written from the standard's attributes (12-bit MONOCHROME2 with a window,
    8-bit MONOCHROME1) form bags by OOI ID and scan, views ordered by Series View, and are
    decided with their identifiers in the decision events."""
    scan = generate_uid()
    side = dx(
        ramp(96, 128, 4095),
        bits_stored=12,
        scan=scan,
        series_view=7,
        WindowCenter=2048,
        WindowWidth=4096,
    )
    top = dx(
        ramp(96, 128, 4095),
        bits_stored=12,
        scan=scan,
        series_view=3,
        WindowCenter=1024,
        WindowWidth=2048,
    )
    alone = dx(ramp(80, 100, 255).astype(np.uint8), photometric="MONOCHROME1", ooi="BAG-0002")
    for name, ds in (("a-side.dcm", side), ("b-top.dcm", top), ("c.dcm", alone)):
        save(ds, tmp_path / "in" / name)
    decide(redis_server, keys, make_worker, tmp_path / "in")

    client = redis_server.client()
    assert client.xlen(keys.dead) == 0
    decided = {e["meta"]["dicos"]["sop_instance_uid"]: e for e in events(client, keys.results)}
    assert set(decided) == {top.SOPInstanceUID, side.SOPInstanceUID, alone.SOPInstanceUID}
    assert (decided[top.SOPInstanceUID]["view"], decided[side.SOPInstanceUID]["view"]) == (0, 1)
    assert decided[top.SOPInstanceUID]["bag_id"].endswith(":BAG-0001")
    assert decided[alone.SOPInstanceUID]["views"] == 1
    originals = [a for e in decided.values() for a in e["artefacts"] if a["kind"] == "original"]
    assert {a["content_type"] for a in originals} == {"application/dicom"}
    assert client.xlen(keys.bags) == 2


BAD_OBJECTS = {
    "not DICOM": (lambda: b"this is no DICOM object at all\n" * 8, "not a DICOM Part-10 file"),
    "a CT, not DX": (
        lambda: part10(dx(np.zeros((8, 8), np.uint16), sop_class=DICOSCTImageStorage, ooi="CT")),
        "is not a DICOS DX image",
    ),
    "no pixel data": (lambda: part10(_without_pixels()), "has no Pixel Data (7FE0,0010)"),
    "JPEG Lossless, no decoder": (
        lambda: part10(_jpeg_lossless()),
        "no installed decoder handles it",
    ),
    "rows × columns disagree": (
        lambda: part10(_short()),
        "need 20000 bytes of Pixel Data; the object has 10000",
    ),
}


def _without_pixels() -> Dataset:
    ds = dx(np.zeros((8, 8), np.uint8), ooi="NOPIX")
    del ds.PixelData
    return ds


def _jpeg_lossless() -> Dataset:
    ds = dx(np.zeros((8, 8), np.uint8), ooi="JPEG")
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not really a lossless JPEG \xff\xd9"])
    ds["PixelData"].VR = "OB"
    return ds


def _short() -> Dataset:
    ds = dx(np.zeros((50, 100), np.uint16), ooi="SHORT")
    ds.Rows = 100
    return ds


@pytest.mark.redis
def test_bad_dicos_objects_are_dead_lettered_with_their_reason(
    redis_server, keys, make_worker, tmp_path
):
    """Each bad object sent by the dicos: source is dead-lettered by the worker, kind
    undecodable, with a reason that says what is wrong; none is decided."""
    for n, (make, _) in enumerate(BAD_OBJECTS.values()):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"bad-{n}.dcs").write_bytes(make())
    decide(redis_server, keys, make_worker, tmp_path / "in")

    client = redis_server.client()
    dead = [json.loads(f[b"event"]) for _, f in client.xrange(keys.dead)]
    assert client.xlen(keys.results) == 0 and len(dead) == len(BAD_OBJECTS)
    assert {d["kind"] for d in dead} == {"undecodable"}
    for case, (_, reason) in BAD_OBJECTS.items():
        assert [d for d in dead if reason in d["reason"]], f"{case}: no dead letter says {reason!r}"
