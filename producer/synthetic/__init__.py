"""The synthetic dual-energy scanner: a data generator for the producer, training, evaluation
and benchmarks (numpy + OpenCV only).

`scanner` composes labelled frames per domain; `render` is the dual-energy canvas,
`shapes` the threat silhouettes and `clutter` the benign contents of a bag.
"""

from producer.synthetic.scanner import (
    DEFAULT_SIZE,
    DOMAINS,
    LABELS,
    SyntheticFrame,
    SyntheticScanner,
)

__all__ = ["DEFAULT_SIZE", "DOMAINS", "LABELS", "SyntheticFrame", "SyntheticScanner"]
