"""The multi-view synthetic scanner: determinism, per-view ground truth, poses, occlusion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from producer.synthetic import Orientation, SyntheticBag, SyntheticBagScanner
from producer.synthetic.pose import MIN_WIDTH_PX
from producer.synthetic.views import OCCLUDED_FRACTION

SMALL = (192, 144)
FLAT = Orientation(spin=0.4, tilt=0.0, yaw=1.1)  # lying on the belt
STANDING = Orientation(spin=0.0, tilt=0.5 * np.pi, yaw=0.0)  # on its edge, along the belt


def area(box: tuple[int, int, int, int] | None) -> int:
    assert box is not None
    return (box[2] - box[0]) * (box[3] - box[1])


def test_same_seed_and_index_give_identical_bags() -> None:
    """A bag depends only on domain, seed, index and label, not on call order."""
    first = SyntheticBagScanner("target", seed=5, size=SMALL)
    second = SyntheticBagScanner("target", seed=5, size=SMALL)
    later = second.bag(4)
    second.bag(3)
    earlier = first.bag(4)
    for a, b in zip(earlier.views, later.views, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert (a.box, a.occluded, a.name) == (b.box, b.occluded, b.name)
    assert earlier.kind == later.kind
    other = SyntheticBagScanner("target", seed=6, size=SMALL).bag(4)
    assert not np.array_equal(other.views[0].image, earlier.views[0].image)


def test_a_bag_has_a_top_and_a_side_view_that_differ() -> None:
    """Two views by default, named top and side, the same size, with different pixels."""
    bag = SyntheticBagScanner("source", seed=1, size=SMALL).bag(2)
    assert isinstance(bag, SyntheticBag) and bag.label == 2 and bag.label_name == "knife"
    top, side = bag.views
    assert (top.view, top.name, side.view, side.name) == (0, "top", 1, "side")
    for view in bag.views:
        assert view.image.shape == (144, 192, 3) and view.image.dtype == np.uint8
        assert view.mask.shape == (144, 192) and view.mask.dtype == bool
    assert not np.array_equal(top.image, side.image)
    assert not np.array_equal(top.mask, side.mask)


@pytest.mark.parametrize("domain", ["source", "target"])
def test_each_view_box_is_inside_the_frame_and_bounds_its_mask(domain: str) -> None:
    """Every threat view has a non-empty footprint whose bounding box is the view's box."""
    scanner = SyntheticBagScanner(domain, seed=3, size=SMALL)
    for bag in scanner.bags(0, 9):
        if bag.label == 0:
            continue
        assert bag.kind is not None
        for view in bag.views:
            rows, cols = np.nonzero(view.mask)
            assert view.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            x0, y0, x1, y1 = view.box
            assert 0 <= x0 < x1 <= SMALL[0] and 0 <= y0 < y1 <= SMALL[1]


def test_benign_bags_have_no_threat_in_any_view() -> None:
    """Label 0 bags carry no kind, no box, an empty mask and are never occluded."""
    scanner = SyntheticBagScanner("target", seed=2, size=SMALL)
    for index in (0, 3, 6):
        bag = scanner.bag(index)
        assert bag.label == 0 and bag.kind is None
        for view in bag.views:
            assert view.box is None and not view.mask.any()
            assert not view.occluded and view.covered == 0.0


def test_a_flat_knife_is_large_from_the_top_and_a_sliver_from_the_side() -> None:
    """Lying flat, a knife's top box is larger than its side box; standing, the reverse."""
    scanner = SyntheticBagScanner("target", seed=11)
    for index in (2, 5, 8):
        flat = scanner.bag(index, threat_pose=FLAT)
        top, side = flat.views
        assert area(top.box) > 3 * area(side.box), flat.kind
        assert side.box is not None and side.box[3] - side.box[1] >= MIN_WIDTH_PX
        standing = scanner.bag(index, threat_pose=STANDING)
        assert area(standing.views[1].box) > area(standing.views[0].box), standing.kind


def test_forcing_the_pose_keeps_the_rest_of_the_bag() -> None:
    """threat_pose changes the threat only: the kind and the benign contents stay."""
    scanner = SyntheticBagScanner("source", seed=4, size=SMALL)
    drawn, forced = scanner.bag(1), scanner.bag(1, threat_pose=FLAT)
    assert drawn.kind == forced.kind
    for a, b in zip(drawn.views, forced.views, strict=True):
        # Anti-aliased rims and detector blur reach a few pixels past the footprint.
        near = cv2.dilate((a.mask | b.mask).astype(np.uint8), np.ones((9, 9), np.uint8))
        outside = near == 0
        assert outside.mean() > 0.5
        # Noise is drawn after the arrangement, so pixels away from the threat match.
        assert np.array_equal(a.image[outside], b.image[outside])


def test_occluded_follows_its_rule_and_differs_between_views() -> None:
    """occluded == (share of the mask under dense other contents > 60 %), per view.

    In the target domain some threats are hidden in one view and plain in the other.
    """
    scanner = SyntheticBagScanner("target", seed=1, size=(256, 192))
    one_sided = 0
    for bag in scanner.bags(0, 30):
        if bag.label == 0:
            continue
        for view in bag.views:
            share = (view.mask & view.dense).sum() / view.mask.sum()
            assert view.covered == pytest.approx(share)
            assert view.occluded == (share > OCCLUDED_FRACTION)
        one_sided += bag.views[0].occluded != bag.views[1].occluded
    assert one_sided >= 2


def test_more_views_are_oblique_and_bad_arguments_are_refused() -> None:
    """views=4 adds two oblique views; views, domain, seed, index and label are checked."""
    bag = SyntheticBagScanner("target", seed=0, size=SMALL, views=4).bag(1)
    assert [v.name for v in bag.views] == ["top", "side", "oblique-30", "oblique-60"]
    assert all(v.box is not None for v in bag.views)
    assert [v.name for v in SyntheticBagScanner(size=SMALL, views=1).bag(0).views] == ["top"]
    for kwargs in ({"views": 0}, {"views": 9}, {"domain": "elsewhere"}, {"seed": -1}):
        with pytest.raises(ValueError):
            SyntheticBagScanner(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SyntheticBagScanner().bag(-1)
    with pytest.raises(ValueError):
        SyntheticBagScanner().bag(0, label=3)
