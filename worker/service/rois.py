"""Regions of interest: boxes around what the [class] token attended to, in frame pixels.

The rule (DESIGN §9, README): the final attention mask (the last forward's rollout,
max-normalised, on the patch grid) is resized bilinearly to the frame; pixels at or
above `threshold` (a fraction of the mask's maximum, default 0.5) form the region;
each 8-connected component is one ROI with its bounding box, its peak and its mean
attention. ROIs come largest (by area of the component) first, at most `max_rois`; the
component that holds the mask's peak is always among them (it takes the last place if
it would not make the cut), so the model's single strongest point is always boxed.
"""

from __future__ import annotations

import cv2
import numpy as np

from shared.schemas import Roi


def rois_from_mask(
    mask_grid: np.ndarray, frame_hw: tuple[int, int], threshold: float = 0.5, max_rois: int = 5
) -> list[Roi]:
    """ROIs of a (grid rows, grid cols) attention mask for a frame of `frame_hw` pixels."""
    if max_rois == 0:
        return []
    rows, cols = frame_hw
    peak = float(mask_grid.max())
    if not peak > 0.0:
        return []
    attention = cv2.resize(
        (mask_grid / peak).astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR
    )  # (H, W) in [0, 1]
    region = (attention >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    order = sorted(range(1, count), key=lambda k: -int(areas[k]))[:max_rois]
    top = int(labels.flat[int(np.argmax(attention))])  # the peak's component
    if top not in order:
        order[-1] = top
    sums = np.bincount(labels.ravel(), weights=attention.ravel(), minlength=count)
    rois = []
    for k in order:
        x, y, w, h = (int(v) for v in stats[k, :4])
        # The peak is looked for inside the box only: a full-frame scan per ROI is waste.
        box = attention[y : y + h, x : x + w][labels[y : y + h, x : x + w] == k]
        rois.append(Roi(x=x, y=y, w=w, h=h, peak=float(box.max()), mean=float(sums[k] / areas[k])))
    return rois
