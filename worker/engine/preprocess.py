"""The one preprocessing step from a decoded frame to the model's input size.

Serving (the worker's intake) and training (generated frame sets) both call
`to_model_input`, so a model sees at serving time exactly the pixels it was trained on.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_model_input(image: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 RGB image to the model's (rows, cols).

    Area interpolation when either side shrinks (it averages, so thin bright lines do
    not alias away), bilinear when both sides grow (area degenerates to blocky
    nearest-neighbour there).
    """
    rows, cols = input_hw
    if image.shape[:2] == (rows, cols):
        return np.ascontiguousarray(image)
    shrink = image.shape[0] > rows or image.shape[1] > cols
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (cols, rows), interpolation=interpolation)
