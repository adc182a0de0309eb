"""DICOS DX objects in: Part-10 bytes to an (H, W, 3) uint8 RGB image and the object's ids.

A frame with content type `application/dicom` carries a scanner's DICOS Digital X-Ray
object as received (docs/DICOS.md). Everything that makes it unusable is a `DicosError`
whose message is the dead-letter reason: not a Part-10 file, a SOP class that is not DX,
no pixel data, a compressed transfer syntax no installed decoder handles, Rows × Columns
that disagree with the pixel data. The size is checked from the header before any pixel
is decoded, as for JPEG and PNG.

Grey images get the object's own display transform: the Modality LUT (rescale), then the
VOI LUT Sequence or else the window (Window Center/Width, VOI LUT Function), scaled to
0-255; without any VOI the full range the stored bits can take is used. MONOCHROME1 is
inverted so that high attenuation is dark, as it would be shown. RGB (and YBR, converted
by pydicom) at 8 bits passes as is; 9-16 bits keep their top 8.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    DICOSDigitalXRayImageStorageForPresentation,
    DICOSDigitalXRayImageStorageForProcessing,
)

from shared.vocab import DeadKind

DX_SOP_CLASSES = frozenset(
    {DICOSDigitalXRayImageStorageForPresentation, DICOSDigitalXRayImageStorageForProcessing}
)
_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
# What hostile or damaged bytes make pydicom raise while parsing or converting values.
_MALFORMED = (
    InvalidDicomError,
    BytesLengthException,
    NotImplementedError,  # an unknown VR
    OSError,  # a tag cut short in an encapsulated item
    ValueError,
    EOFError,
    struct.error,
    KeyError,
    IndexError,
    TypeError,
    OverflowError,
    AttributeError,
)


class DicosError(ValueError):
    """A DICOS object that cannot be decided; the message is the dead-letter reason."""

    def __init__(self, reason: str, kind: DeadKind = DeadKind.UNDECODABLE) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True, eq=False)
class DicosImage:
    """A decoded DX object: its pixels as shown and the identifiers a report refers to."""

    rgb: np.ndarray  # (H, W, 3) uint8
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str  # the DICOS scan
    series_instance_uid: str
    ooi_id: str  # Object of Inspection ID (0010,0020): the bag


def is_part10(data: bytes) -> bool:
    """True if `data` has the DICOM Part-10 marker "DICM" after its 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode_dicos(data: bytes, max_pixels: int, max_side: int = 16_384) -> DicosImage:
    """Decode a DICOS DX Part-10 object; raise `DicosError` with the reason it is unusable."""
    if not is_part10(data):
        raise DicosError("not a DICOM Part-10 file: no 'DICM' marker at byte 128")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        header = _checked_header(ds, max_pixels, max_side)
        rgb = _pixels(ds, header)
        return DicosImage(
            rgb=rgb,
            sop_class_uid=header.sop_class,
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            ooi_id=str(ds.get("PatientID", "")),
        )
    except DicosError:
        raise
    except _MALFORMED as exc:
        raise DicosError(f"unreadable DICOM object: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class _Header:
    sop_class: str
    transfer_syntax: UID
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str


def _checked_header(ds: Dataset, max_pixels: int, max_side: int) -> _Header:
    """Everything the pixels depend on, checked before a single pixel is decoded."""
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop_class not in DX_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "none given"
        raise DicosError(
            f"SOP class {sop_class or '-'} ({name}) is not a DICOS DX image "
            f"({DICOSDigitalXRayImageStorageForPresentation} or "
            f"{DICOSDigitalXRayImageStorageForProcessing})"
        )
    if "PixelData" not in ds:
        raise DicosError("the DX object has no Pixel Data (7FE0,0010)")
    missing = [
        keyword
        for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")
        if ds.get(keyword) in (None, "")
    ]
    if missing:
        raise DicosError(f"the DX object lacks {', '.join(missing)}")
    transfer_syntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    header = _Header(
        sop_class=sop_class,
        transfer_syntax=transfer_syntax,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples=int(ds.get("SamplesPerPixel", 1) or 1),
        bits_allocated=int(ds.BitsAllocated),
        bits_stored=int(ds.get("BitsStored") or ds.BitsAllocated),
        photometric=str(ds.PhotometricInterpretation).strip().upper(),
    )
    _check_size(header, max_pixels, max_side)
    _check_format(ds, header)
    return header


def _check_size(header: _Header, max_pixels: int, max_side: int) -> None:
    rows, columns = header.rows, header.columns
    if rows == 0 or columns == 0:
        raise DicosError(f"the DX object declares {columns}x{rows} pixels")
    if max(rows, columns) > max_side:
        raise DicosError(
            f"image is {columns}x{rows}, a side over the {max_side}-pixel limit",
            DeadKind.TOO_LARGE,
        )
    if rows * columns > max_pixels:
        raise DicosError(
            f"image is {columns}x{rows}, over the {max_pixels}-pixel limit", DeadKind.TOO_LARGE
        )


def _check_format(ds: Dataset, header: _Header) -> None:
    """Pixel formats, transfer syntax and the length of uncompressed pixel data."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicosError(f"the DX object holds {frames} frames; one image per object is read")
    if header.photometric in _GREY:
        if header.samples != 1:
            raise DicosError(f"{header.photometric} with {header.samples} samples per pixel")
    elif header.photometric in _COLOUR:
        if header.samples != 3:
            raise DicosError(f"{header.photometric} with {header.samples} samples per pixel")
    else:
        raise DicosError(
            f"photometric interpretation {header.photometric} is not read "
            f"(MONOCHROME1, MONOCHROME2, RGB or YBR_FULL)"
        )
    if header.bits_allocated not in (8, 16) or not 1 <= header.bits_stored <= 16:
        raise DicosError(
            f"{header.bits_stored} bits stored in {header.bits_allocated} allocated; "
            "8 to 16 bits in 8 or 16 are read"
        )
    syntax = header.transfer_syntax
    if syntax == DeflatedExplicitVRLittleEndian:
        # Inflating happens before any header can be checked: its size has no bound.
        raise DicosError("deflated transfer syntax is refused: its inflated size is unbounded")
    if syntax.is_compressed:
        decoder = get_decoder(syntax)
        if not decoder.is_available:
            raise DicosError(
                f"compressed transfer syntax {syntax.name} ({syntax}) and no installed "
                "decoder handles it"
            )
        return
    expected = header.rows * header.columns * header.samples * (header.bits_allocated // 8)
    actual = len(ds.PixelData)
    # One byte of padding keeps an odd length even.
    if not expected <= actual <= expected + 1:
        raise DicosError(
            f"Rows × Columns × Samples per Pixel ({header.rows}×{header.columns}×"
            f"{header.samples}) at {header.bits_allocated} bits allocated need {expected} "
            f"bytes of Pixel Data; the object has {actual}"
        )


def _pixels(ds: Dataset, header: _Header) -> np.ndarray:
    try:
        stored = ds.pixel_array  # (H, W) or (H, W, 3); YBR arrives as RGB
    except (*_MALFORMED, RuntimeError) as exc:
        raise DicosError(
            f"{header.transfer_syntax.name} pixel data could not be decoded: {exc}"
        ) from None
    expected = (header.rows, header.columns) + ((3,) if header.samples == 3 else ())
    if stored.shape != expected:
        raise DicosError(
            f"decoded pixel data is {stored.shape}, not the {expected} Rows × Columns declare"
        )
    if header.samples == 3:
        shift = max(0, header.bits_stored - 8)
        return np.ascontiguousarray((stored >> shift).astype(np.uint8))
    grey = _displayed(stored, ds, header)  # (H, W) float in [0, 1]
    if header.photometric == "MONOCHROME1":
        grey = 1.0 - grey
    levels = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(levels[:, :, None], 3, axis=2)


def _displayed(stored: np.ndarray, ds: Dataset, header: _Header) -> np.ndarray:
    """Stored grey values through the Modality LUT and the VOI, to [0, 1]."""
    values = apply_modality_lut(stored, ds).astype(np.float64)
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        looked_up = apply_voi(np.rint(values).astype(np.int64), ds, 0)  # a LUT takes integers
        return np.clip(looked_up / float(2**bits - 1), 0.0, 1.0)
    if ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        return window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), ds)
    low, high = _value_range(ds, header)
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


def window(values: np.ndarray, center: float, width: float, ds: Dataset) -> np.ndarray:
    """The VOI window of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID) onto [0, 1]."""
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        if width <= 0:
            raise DicosError(f"Window Width {width} must be above 0 for SIGMOID")
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)))
    if function == "LINEAR":
        if width < 1:
            raise DicosError(f"Window Width {width} must be at least 1 for LINEAR")
        center, width = center - 0.5, width - 1.0
    elif function != "LINEAR_EXACT":
        raise DicosError(f"VOI LUT Function {function} is not read")
    elif width <= 0:
        raise DicosError(f"Window Width {width} must be above 0 for LINEAR_EXACT")
    if width == 0:  # LINEAR with width 1: a hard threshold at the center
        return (values > center).astype(np.float64)
    return np.clip((values - center) / width + 0.5, 0.0, 1.0)


def _first(value: object) -> float:
    """Window Center/Width are multi-valued (alternative windows): the first one is used."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _value_range(ds: Dataset, header: _Header) -> tuple[float, float]:
    """The range stored values can span, after the Modality LUT."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = header.bits_stored
    if int(ds.get("PixelRepresentation", 0) or 0) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]
