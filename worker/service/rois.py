"""Regions of interest: boxes around what the [class] token attended to, in frame pixels.

The rule (README, "Reading decisions"): the final attention mask (the last forward's
rollout, max-normalised, on the patch grid) is resized bilinearly to the frame and
scaled so its maximum is 1 again; pixels at or above `threshold` (a fraction of that
maximum, default 0.5) form the region;
each 8-connected component is one ROI with its bounding box, its peak and its mean
attention. ROIs come largest (by area of the component) first, at most `max_rois`; the
component that holds the mask's peak is always among them (it takes the last place if
it would not make the cut), so the model's single strongest point is always boxed.

The components are found on the mask resized to at most `WORK_SIDE` pixels a side and
their boxes scaled back to the frame, so box edges are exact to within one working cell
(3 px for a 512×384 frame). A patch of the model covers tens of frame pixels, so this
loses nothing the attention knows, and it makes ROIs cheap enough for every view.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from shared.schemas import Roi

WORK_SIDE = 192


def work_scale(frame_hw: tuple[int, int]) -> int:
    """Frame pixels per working cell (an integer, at least 1)."""
    return max(1, math.ceil(max(frame_hw) / WORK_SIDE))


def rois_from_mask(
    mask_grid: np.ndarray, frame_hw: tuple[int, int], threshold: float = 0.5, max_rois: int = 5
) -> list[Roi]:
    """ROIs of a (grid rows, grid cols) attention mask for a frame of `frame_hw` pixels."""
    if max_rois == 0:
        return []
    rows, cols = frame_hw
    scale = work_scale(frame_hw)
    work_hw = (math.ceil(rows / scale), math.ceil(cols / scale))
    attention: np.ndarray = cv2.resize(
        mask_grid.astype(np.float32), (work_hw[1], work_hw[0]), interpolation=cv2.INTER_LINEAR
    )
    # Normalised after the resize, not before: a lone peak cell can fall between resized
    # samples, and the threshold must be a fraction of the map it cuts, so the peak's
    # component is never empty.
    top_value = float(attention.max())
    if not top_value > 0.0:  # no attention, or a frame whose samples all miss the peak
        return []
    attention = attention / top_value  # (h, w) in [0, 1], max exactly 1
    region = (attention >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    order = sorted(range(1, count), key=lambda k: -int(areas[k]))[:max_rois]
    top = int(labels.flat[int(np.argmax(attention))])  # the peak's component
    if top not in order:
        order[-1] = top
    rois = []
    for k in order:
        x, y, w, h = (int(v) for v in stats[k, :4])
        inside = attention[y : y + h, x : x + w][labels[y : y + h, x : x + w] == k]
        x0, y0 = x * scale, y * scale
        x1, y1 = min(cols, (x + w) * scale), min(rows, (y + h) * scale)
        rois.append(
            Roi(
                x=x0,
                y=y0,
                w=x1 - x0,
                h=y1 - y0,
                peak=float(inside.max()),
                mean=float(inside.mean()),
            )
        )
    return rois
