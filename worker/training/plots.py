"""PNG figures for the evaluation report, drawn with OpenCV: the sweep plot and the erasing montage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_GREY = (200, 200, 200)
# BGR colours per max_iter for erasing points, and for the baselines.
_ITER_COLOURS = {
    1: (230, 160, 60),
    2: (60, 180, 230),
    3: (60, 170, 60),
    4: (200, 80, 200),
    5: (40, 40, 220),
}
_VANILLA = (90, 90, 90)
_CHOSEN = (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(
    img: np.ndarray,
    text: str,
    org: tuple[int, int],
    scale: float = 0.45,
    colour=_BLACK,
    thick: int = 1,
) -> None:
    cv2.putText(img, text, org, _FONT, scale, colour, thick, cv2.LINE_AA)


def _panel(
    img: np.ndarray,
    box: tuple[int, int, int, int],
    title: str,
    sweep_rows: Sequence[dict],
    vanilla_rows: Sequence[dict],
    argmax_point: dict,
    chosen: dict | None,
    far_max: float,
) -> None:
    x0, y0, x1, y1 = box
    left, bottom = x0 + 60, y1 - 45
    right, top = x1 - 15, y0 + 35
    _text(img, title, (x0 + 200, y0 + 22), 0.55, thick=1)

    def to_px(far: float, recall: float) -> tuple[int, int]:
        px = left + (right - left) * min(far / far_max, 1.0)
        py = bottom - (bottom - top) * recall
        return round(px), round(py)

    for k in range(6):
        rec = k / 5
        py = to_px(0, rec)[1]
        cv2.line(img, (left, py), (right, py), _GREY, 1)
        _text(img, f"{rec:.1f}", (left - 35, py + 5), 0.4)
        far = far_max * k / 5
        px = to_px(far, 0)[0]
        cv2.line(img, (px, top), (px, bottom), _GREY, 1)
        _text(img, f"{far:.2f}", (px - 15, bottom + 18), 0.4)
    cv2.rectangle(img, (left, top), (right, bottom), _BLACK, 1)
    _text(img, "false-alarm rate (benign frames called threat)", (left + 40, bottom + 38), 0.45)
    _text(img, "mean threat recall", (x0 + 8, top - 14), 0.42)

    for row in sweep_rows:
        colour = _ITER_COLOURS.get(int(row["policy"]["max_iter"]), _BLACK)
        cv2.circle(
            img, to_px(row["false_alarm_rate"], row["mean_recall"]), 3, colour, -1, cv2.LINE_AA
        )
    curve = sorted(vanilla_rows, key=lambda r: r["false_alarm_rate"])
    pts = np.array([to_px(r["false_alarm_rate"], r["mean_recall"]) for r in curve], np.int32)
    cv2.polylines(img, [pts], False, _VANILLA, 2, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, tuple(int(v) for v in p), 3, _VANILLA, -1, cv2.LINE_AA)
    ax, ay = to_px(argmax_point["false_alarm_rate"], argmax_point["mean_recall"])
    cv2.rectangle(img, (ax - 6, ay - 6), (ax + 6, ay + 6), _VANILLA, 2)
    if chosen is not None:
        cx, cy = to_px(chosen["false_alarm_rate"], chosen["mean_recall"])
        cv2.drawMarker(img, (cx, cy), _CHOSEN, cv2.MARKER_STAR, 18, 2, cv2.LINE_AA)


def sweep_plot(path: Path, panels: Sequence[dict]) -> None:
    """Recall vs false-alarm rate: erasing sweep points, vanilla threshold curve, argmax, chosen policy.

    Each panel dict: title, sweep (rows), vanilla (rows), argmax (row), chosen (row or None).
    """
    width, height = max(620 * len(panels), 1300), 560
    img = np.full((height, width, 3), 255, np.uint8)
    far_max = max(
        0.05,
        min(
            1.0,
            1.1
            * max(
                max(float(r["false_alarm_rate"]) for r in [*p["sweep"], *p["vanilla"], p["argmax"]])
                for p in panels
            ),
        ),
    )
    for i, panel in enumerate(panels):
        _panel(
            img,
            (620 * i, 0, 620 * (i + 1), height - 60),
            panel["title"],
            panel["sweep"],
            panel["vanilla"],
            panel["argmax"],
            panel.get("chosen"),
            far_max,
        )
    y = height - 22
    x = 20
    for k, colour in _ITER_COLOURS.items():
        cv2.circle(img, (x, y - 4), 5, colour, -1, cv2.LINE_AA)
        _text(img, f"erasing, max_iter={k}", (x + 10, y), 0.42)
        x += 150
    cv2.line(img, (x, y - 4), (x + 25, y - 4), _VANILLA, 2)
    _text(img, "vanilla, threshold swept", (x + 30, y), 0.42)
    x += 200
    cv2.rectangle(img, (x, y - 10), (x + 12, y + 2), _VANILLA, 2)
    _text(img, "vanilla argmax", (x + 18, y), 0.42)
    x += 130
    cv2.drawMarker(img, (x + 6, y - 4), _CHOSEN, cv2.MARKER_STAR, 14, 2)
    _text(img, "chosen on validation", (x + 18, y), 0.42)
    cv2.imwrite(str(path), img)


def montage(path: Path, rows: Sequence[dict], labels: Sequence[str], scale: int = 2) -> None:
    """Original → each erasing step, with the class probabilities under every image.

    Each row dict: title (str), images (list of (H, W, 3) uint8 RGB, original first),
    probs (list of probability vectors, one per image).
    """
    if not rows:
        return
    height, width = rows[0]["images"][0].shape[:2]
    tile_w, tile_h = width * scale, height * scale
    text_h = 18 * len(labels) + 8
    columns = max(len(r["images"]) for r in rows)
    pad = 8
    canvas_h = len(rows) * (tile_h + text_h + 24 + pad) + pad
    canvas_w = columns * (tile_w + pad) + pad
    img = np.full((canvas_h, canvas_w, 3), 255, np.uint8)
    y = pad
    for row in rows:
        _text(img, row["title"], (pad, y + 16), 0.5)
        y += 24
        for col, (image, probs) in enumerate(zip(row["images"], row["probs"], strict=True)):
            x = pad + col * (tile_w + pad)
            big = cv2.resize(image, (tile_w, tile_h), interpolation=cv2.INTER_NEAREST)
            img[y : y + tile_h, x : x + tile_w] = cv2.cvtColor(big, cv2.COLOR_RGB2BGR)
            _text(
                img, "original" if col == 0 else f"step {col}", (x + 4, y + 14), 0.45, (0, 0, 160)
            )
            for k, name in enumerate(labels):
                _text(img, f"P({name}) = {probs[k]:.3f}", (x + 4, y + tile_h + 16 + 18 * k), 0.45)
        y += tile_h + text_h + pad
    cv2.imwrite(str(path), img)
