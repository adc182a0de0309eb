"""Drawing for `python -m worker explain`: the montage of erasing steps and the ROI picture."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from shared.schemas import Roi
from shared.vocab import Verdict
from worker.engine.erasing import FrameResult

TILE_SIDE = 256  # montage tiles: the frame scaled so its longer side is this many pixels
_FONT, _SCALE, _LINE, _PAD = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 18, 6
_INK = (20, 20, 20)
COLOURS = {  # RGB
    Verdict.THREAT: (205, 30, 30),
    Verdict.UNDETERMINED: (225, 135, 0),
    Verdict.CLEAR: (30, 145, 60),
}


def _put(canvas: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    cv2.putText(canvas, text, (x, y), _FONT, _SCALE, colour, 1, cv2.LINE_AA)


def _text_width(text: str) -> int:
    return int(cv2.getTextSize(text, _FONT, _SCALE, 1)[0][0])


def _fit(text: str, width: int, keep_end: bool = False) -> str:
    """`text` shortened with "..." until it is at most `width` pixels wide."""
    while _text_width(text) > width and len(text) > 4:
        text = "..." + text[4:] if keep_end else text[:-4] + "..."
    return text


def tile_hw(frame_hw: tuple[int, int], side: int = TILE_SIDE) -> tuple[int, int]:
    """A montage tile's (rows, cols): the frame scaled so its longer side is `side`."""
    scale = side / max(frame_hw)
    return max(1, round(frame_hw[0] * scale)), max(1, round(frame_hw[1] * scale))


def montage(
    tiles: Sequence[np.ndarray],
    probs: Sequence[Sequence[float]],
    labels: Sequence[str],
    header: Sequence[str],
    *,
    hot: Sequence[Sequence[bool]],
    colour: tuple[int, int, int],
) -> np.ndarray:
    """Tiles side by side (the original first), P(label) for every label under each.

    Every cell is as wide as the widest of a tile and its captions, so the montage is
    exactly `len(tiles)` cells wide; `hot[i][k]` draws tile i's P(label k) in `colour`,
    and the last tile (the one decided on) is framed in it. Returns (H, W, 3) RGB.
    """
    rows, cols = tiles[0].shape[:2]
    captions = ["original", *(f"P({name}) = 0.000" for name in labels)]
    cell_w = max(cols, *(_text_width(c) for c in captions)) + 2 * _PAD
    head_h = len(header) * _LINE + _PAD
    canvas = np.full(
        (head_h + rows + 2 * _PAD + len(captions) * _LINE + _PAD, cell_w * len(tiles), 3),
        255,
        np.uint8,
    )
    for line, text in enumerate(header):
        _put(
            canvas,
            _fit(text, canvas.shape[1] - 2 * _PAD, keep_end=line == 0),
            _PAD,
            (line + 1) * _LINE,
            _INK,
        )
    for index, (tile, p) in enumerate(zip(tiles, probs, strict=True)):
        left, top = index * cell_w, head_h + _PAD
        x0 = left + (cell_w - cols) // 2
        canvas[top : top + rows, x0 : x0 + cols] = tile
        y = top + rows + _LINE
        _put(canvas, "original" if index == 0 else f"step {index}", left + _PAD, y, _INK)
        for k, name in enumerate(labels):
            y += _LINE
            _put(
                canvas, f"P({name}) = {p[k]:.3f}", left + _PAD, y, colour if hot[index][k] else _INK
            )
    last = (len(tiles) - 1) * cell_w + (cell_w - cols) // 2
    cv2.rectangle(
        canvas,
        (last - 2, head_h + _PAD - 2),
        (last + cols + 1, head_h + _PAD + rows + 1),
        colour,
        2,
    )
    return canvas


def verdict_text(result: FrameResult, labels: Sequence[str]) -> str:
    return " ".join([result.verdict.value.upper(), *(labels[c] for c in result.classes)])


def _tag(out: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    """White `text` on a `colour` label whose top-left corner is near (x, y), inside `out`."""
    thick, scale = max(1, round(max(out.shape[:2]) / 400)), max(0.4, max(out.shape[:2]) / 1200)
    (width, height), base = cv2.getTextSize(text, _FONT, scale, thick)
    x = max(0, min(x, out.shape[1] - width - 4))
    y = max(0, min(y, out.shape[0] - height - base - 2))
    cv2.rectangle(out, (x, y), (x + width + 4, y + height + base + 2), colour, -1)
    cv2.putText(
        out, text, (x + 2, y + height + 1), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA
    )


def draw_rois(
    image: np.ndarray, rois: Sequence[Roi], banner: str, tag: str, colour: tuple[int, int, int]
) -> np.ndarray:
    """A copy of `image` with `banner` in its top-left corner and every ROI boxed in
    `colour` and labelled `tag` just above the box (inside it at the frame's top edge)."""
    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    height = cv2.getTextSize(tag, _FONT, max(0.4, max(out.shape[:2]) / 1200), thick)[0][1]
    for roi in rois:
        cv2.rectangle(out, (roi.x, roi.y), (roi.x + roi.w - 1, roi.y + roi.h - 1), colour, thick)
        above = roi.y - height - 2 * thick - 4
        _tag(out, tag, roi.x, above if above >= 0 else roi.y + thick, colour)
    _tag(out, banner, 0, 0, colour)
    return out
