"""The foreign scanner: a second X-ray simulator, kept out of training, for scores on an unseen look.

`simulator` composes labelled frames; `volumes` holds the 2.5-D primitives and materials,
`threats`, `belongings` and `electronics` the objects, `luggage` the belt and container,
`detector` the photon counting and `display` the display modes (numpy + OpenCV only).
"""

from producer.foreign.simulator import DEFAULT_SIZE, LABELS, ForeignFrame, ForeignScanner

__all__ = ["DEFAULT_SIZE", "LABELS", "ForeignFrame", "ForeignScanner"]
