"""The synthetic dual-energy scanner: a data generator for the producer, training, evaluation
and benchmarks (numpy + OpenCV only).

`scanner` composes labelled frames per domain; `views` composes multi-view bags (one 3-D
arrangement seen from the top and the side, posed and projected by `pose`); `render` is
the dual-energy canvas, `shapes` the threat silhouettes and `clutter` the benign contents.
"""

from producer.synthetic.pose import Orientation
from producer.synthetic.scanner import (
    DEFAULT_SIZE,
    DOMAINS,
    LABELS,
    SyntheticFrame,
    SyntheticScanner,
)
from producer.synthetic.views import MAX_VIEWS, SyntheticBag, SyntheticBagScanner, SyntheticView

__all__ = [
    "DEFAULT_SIZE",
    "DOMAINS",
    "LABELS",
    "MAX_VIEWS",
    "Orientation",
    "SyntheticBag",
    "SyntheticBagScanner",
    "SyntheticFrame",
    "SyntheticScanner",
    "SyntheticView",
]
