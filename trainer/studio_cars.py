"""Per-car checks over a car's 16 turntable views (``carvana predict``'s ``cars.json``).

A studio shoots every car on a turntable, 16 views 22.5 degrees apart (Kaggle's ``<id>_01`` .. ``_16``,
01 the front, 09 the rear). Neighbouring views see nearly the same silhouette, and a car is left-right
symmetric, so view ``v`` also looks like view ``18 - v`` mirrored (02 and 16, 03 and 15, ...). A mask
whose area or box strays from *both* predictions (the mean of its two neighbours, and its mirror view
flipped) is a sign of a bad mask, even when the model was confident about it.

Thresholds from the ground-truth masks of the 48 real cars in ../shared/carvana (768 views): the
smaller of the two deviations is at most 7.5 % for the area and 13 % of the box's size for any box
side (99th percentile 5.6 % / 11.7 %), so a view is flagged above 10 % / 15 %. The front and rear
views, which have no mirror partner, are compared with their neighbours' mean scaled down (FRONT_REAR);
with that, 1 of the 768 true masks is flagged (a rear view, 11 % / 19 %).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

VIEWS = 16
AREA_TOLERANCE = 0.10
BOX_TOLERANCE = 0.15
# The front (01) and rear (09) views against the mean of their neighbours, on those 48 cars:
# (area ratio, box width ratio) = (0.86 +- 0.03, 0.77 +- 0.035) and (0.81 +- 0.04, 0.75 +- 0.04).
FRONT_REAR = {1: (0.86, 0.77), 9: (0.81, 0.75)}
_KAGGLE_NAME = re.compile(r"^(?P<car>.+)_(?P<view>\d{2})$")


def car_and_view(stem: str) -> tuple[str, int | None]:
    """``"0795e132d090_03"`` -> ``("0795e132d090", 3)``; a photo named otherwise is its own car."""
    match = _KAGGLE_NAME.match(stem)
    if match and 1 <= int(match["view"]) <= VIEWS:
        return match["car"], int(match["view"])
    return stem, None


class View(NamedTuple):
    """What the check needs of one view: its area share and relative box (x0, y0, x1, y1)."""

    car_fraction: float
    box: tuple[float, float, float, float] | None


def _deviation(view: View, expected: View) -> tuple[float, float]:
    """(relative area difference, largest box side difference as a share of the expected box)."""
    assert view.box is not None and expected.box is not None
    area = abs(view.car_fraction - expected.car_fraction) / max(expected.car_fraction, 1e-6)
    x0, y0, x1, y1 = expected.box
    width, height = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    sides = [
        abs(a - b) / (width if i % 2 == 0 else height)
        for i, (a, b) in enumerate(zip(view.box, expected.box, strict=True))
    ]
    return area, max(sides)


def _neighbours_mean(views: Mapping[int, View], number: int) -> View | None:
    """The mean of the two neighbouring views; for the front and rear (narrowest, no mirror partner)
    scaled by how much smaller they are than that mean (FRONT_REAR)."""
    before, after = views.get((number - 2) % VIEWS + 1), views.get(number % VIEWS + 1)
    if before is None or after is None or before.box is None or after.box is None:
        return None
    x0, y0, x1, y1 = ((a + b) / 2 for a, b in zip(before.box, after.box, strict=True))
    area_scale, width_scale = FRONT_REAR.get(number, (1.0, 1.0))
    centre, half = (x0 + x1) / 2, (x1 - x0) / 2 * width_scale
    return View(
        (before.car_fraction + after.car_fraction) / 2 * area_scale, (centre - half, y0, centre + half, y1)
    )


def _mirror(views: Mapping[int, View], number: int) -> View | None:
    partner = (VIEWS + 2 - number - 1) % VIEWS + 1
    other = views.get(partner)
    if partner == number or other is None or other.box is None:
        return None
    x0, y0, x1, y1 = other.box
    return View(other.car_fraction, (1.0 - x1, y0, 1.0 - x0, y1))


def check_car(views: Mapping[int, View]) -> dict[int, list[str]]:
    """The reasons, per view number, that a view does not fit the car's turntable sequence.

    A view with no car at all is always flagged; one with no prediction to compare with (its
    neighbours and mirror missing) is not checked.
    """
    flags: dict[int, list[str]] = {}
    for number, view in sorted(views.items()):
        if view.box is None:
            flags[number] = ["no car found"]
            continue
        predictions = [p for p in (_neighbours_mean(views, number), _mirror(views, number)) if p is not None]
        if not predictions:
            continue
        area, box = (min(values) for values in zip(*(_deviation(view, p) for p in predictions), strict=True))
        reasons = []
        if area > AREA_TOLERANCE:
            reasons.append(f"area off by {area:.0%} from its neighbours and mirror view")
        if box > BOX_TOLERANCE:
            reasons.append(f"box off by {box:.0%} of its size from its neighbours and mirror view")
        if reasons:
            flags[number] = reasons
    return flags


def common_content(boxes: Sequence[tuple[int, int, int, int] | None]) -> tuple[float, float] | None:
    """The (width, height) every view of a car is framed for: its largest box, so all 16 views share
    one scale and the turntable sequence does not jump."""
    sizes = [(x1 - x0, y1 - y0) for box in boxes if box is not None for x0, y0, x1, y1 in [box]]
    if not sizes:
        return None
    return float(max(w for w, _ in sizes)), float(max(h for _, h in sizes))
