"""trainer/studio.py and trainer/studio_cars.py: finished photos, framing, the review signals, the
per-car checks (pure NumPy on synthetic pictures whose true colours are known)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from trainer import studio
from trainer.studio_cars import FRONT_REAR, View, car_and_view, check_car, common_content
from trainer.wire import FinishOptions, WireError, finish_options_from_attributes

CAR = np.array([200.0, 30.0, 40.0])  # a red car
STUDIO_GREY = np.array([128.0, 128.0, 128.0])
# An edge pixel of the finished photo may sit at most this far (RGB distance, 0..255 scale) from the
# line between the car's colour and the new backdrop; a grey studio rim on white is ~40-50 away.
GREY_TOLERANCE = 6.0


def studio_photo(
    height: int = 240, width: int = 360, car: np.ndarray = CAR, studio_colour: np.ndarray = STUDIO_GREY
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A car-shaped ellipse on a studio backdrop, antialiased (drawn 4x larger, averaged down).

    Returns (rgb uint8, true coverage in [0, 1], probabilities as a network gives them: the coverage
    blurred and a little too generous, so the soft edge reaches into the studio by a pixel or two).
    """
    scale = 4
    rows, cols = np.mgrid[0 : height * scale, 0 : width * scale] / scale
    inside = ((rows - height * 0.55) / (height * 0.28)) ** 2 + ((cols - width / 2) / (width * 0.36)) ** 2 < 1
    coverage = inside.reshape(height, scale, width, scale).mean(axis=(1, 3))
    rgb = coverage[..., None] * car + (1 - coverage[..., None]) * studio_colour
    probabilities = np.clip(studio.box_blur(coverage, 2) + 0.1, 0, 1)
    return np.rint(rgb).astype(np.uint8), coverage, probabilities


def distance_to_segment(pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance of each RGB pixel to the segment from colour a to colour b."""
    direction = b - a
    t = np.clip(((pixels - a) @ direction) / (direction @ direction), 0, 1)
    return np.linalg.norm(pixels - (a + t[..., None] * direction), axis=-1)


@pytest.mark.parametrize(
    ("car", "studio_colour"),
    [(CAR, STUDIO_GREY), (np.array([190.0, 192.0, 198.0]), np.array([40.0, 40.0, 44.0]))],
    ids=["red-on-grey", "silver-on-dark"],
)
def test_edge_pixels_carry_no_studio_grey_on_white(car: np.ndarray, studio_colour: np.ndarray) -> None:
    rgb, _, probabilities = studio_photo(car=car, studio_colour=studio_colour)
    finished = studio.finish_pixels(rgb, probabilities, options=FinishOptions()).image.astype(float)
    alpha = studio.soft_alpha(probabilities)
    edge = (alpha > 0) & (alpha < 1)
    white = np.array([255.0, 255.0, 255.0])
    assert edge.sum() > 100  # a feathered band, not a hard cut
    assert distance_to_segment(finished[edge], car, white).max() <= GREY_TOLERANCE
    # The same alpha over the photo's own colours shows the grey rim: the check can fail.
    naive = alpha[..., None] * rgb + (1 - alpha[..., None]) * white
    assert distance_to_segment(naive[edge], car, white).max() > 3 * GREY_TOLERANCE


@pytest.mark.parametrize("shadow", [False, True])
@pytest.mark.parametrize("backdrop", [(255, 255, 255), (10, 60, 200)])
def test_backdrop_far_from_the_car_is_exactly_the_requested_colour(
    backdrop: tuple[int, int, int], shadow: bool
) -> None:
    rgb, coverage, probabilities = studio_photo()
    finished = studio.finish_pixels(
        rgb, probabilities, options=FinishOptions(backdrop=backdrop, shadow=shadow)
    )
    x0, y0, x1, y1 = studio.car_box(coverage)
    # "Far": outside the car's box grown by a fifth of its size on every side (the shadow lies within).
    grow_x, grow_y = (x1 - x0) // 5, (y1 - y0) // 5
    far = np.ones(coverage.shape, bool)
    far[max(0, y0 - grow_y) : y1 + grow_y, max(0, x0 - grow_x) : x1 + grow_x] = False
    assert far.sum() > 10_000
    assert (finished.image[far] == backdrop).all()
    below = finished.image[y1 + 1 : y1 + 4, (x0 + x1) // 2]
    if shadow:  # the floor under the car is darker than the backdrop, and only there
        assert (below.astype(int).sum(axis=1) < sum(backdrop) - 30).all()
    else:
        assert (below == backdrop).all()


def test_backdrop_image_is_scaled_to_fill_the_photo() -> None:
    rgb, _, probabilities = studio_photo(120, 180)
    # A 10x10 backdrop: left half green, right half blue; it must cover 120x180 (scaled 18x, cropped).
    tile = np.zeros((10, 10, 3), np.uint8)
    tile[:, :5], tile[:, 5:] = (0, 255, 0), (0, 0, 255)
    data = io.BytesIO()
    Image.fromarray(tile).save(data, format="PNG")
    finished = studio.finish_pixels(rgb, probabilities, options=FinishOptions(backdrop_image=data.getvalue()))
    assert finished.image.shape == (120, 180, 3)
    assert tuple(finished.image[2, 2]) == (0, 255, 0) and tuple(finished.image[2, -3]) == (0, 0, 255)


def test_frame_centres_the_car_with_the_margin_and_one_scale_per_car() -> None:
    rgb, _, probabilities = studio_photo()
    options = FinishOptions(frame=4 / 3, margin=0.1)
    finished = studio.finish_pixels(rgb, probabilities, options=options)
    height, width = finished.image.shape[:2]
    assert width / height == pytest.approx(4 / 3, abs=0.01)
    inner = studio.car_box(studio.soft_alpha(studio.crop(probabilities, finished.window, pad="zero")))
    x0, y0, x1, y1 = inner
    left, right, top, bottom = x0, width - x1, y0, height - y1
    assert abs(left - right) <= 2 and abs(top - bottom) <= 2  # centred
    assert min(left / width, top / height) == pytest.approx(0.1, abs=0.01)  # the tighter side's margin
    # A bigger content size (another view's larger box): same frame size for both, so one scale.
    box_w, box_h = x1 - x0, y1 - y0
    bigger = studio.finish_pixels(rgb, probabilities, options=options, content=(box_w * 1.5, box_h))
    again = studio.finish_pixels(
        rgb, probabilities[:, ::-1].copy(), options=options, content=(box_w * 1.5, box_h)
    )
    assert bigger.image.shape == again.image.shape and bigger.image.shape[1] > width


def test_frame_pads_past_the_photo_with_the_backdrop() -> None:
    rgb, _, probabilities = studio_photo()
    finished = studio.finish_pixels(rgb, probabilities, options=FinishOptions(frame=3.0, margin=0.3))
    assert finished.window.left < 0 and finished.image.shape[1] > rgb.shape[1]
    assert (finished.image[:, :3] == 255).all()


def test_box_fields_in_pixels_and_relative() -> None:
    _, coverage, probabilities = studio_photo()
    analysis = studio.analyse(_png8(probabilities), flip_disagreement=0.0, options=FinishOptions())
    box = analysis.fields()["box"]
    x0, y0, x1, y1 = studio.car_box(coverage)
    assert (box["x"], box["y"], box["width"], box["height"]) == pytest.approx(
        (x0, y0, x1 - x0, y1 - y0), abs=3
    )
    assert box["relative"]["width"] == pytest.approx(box["width"] / 360, abs=1e-4)


def _png8(probabilities: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.rint(probabilities * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_review_signals_fragments_and_flip_disagreement() -> None:
    _, _, probabilities = studio_photo()
    clean = studio.review(probabilities, flip_disagreement=0.001, threshold=0.05)
    assert clean.fragments == 0.0 and not clean.needs_review
    assert 0 < clean.uncertain < 0.15
    speckled = probabilities.copy()
    speckled[5:45, 5:65] = 1.0  # a separate blob: a fragment of 2400 px
    fragmented = studio.review(speckled, flip_disagreement=0.001, threshold=0.05)
    car_area = (speckled > 0.5).sum()
    assert fragmented.fragments == pytest.approx(2400 / car_area, rel=0.05)
    assert fragmented.needs_review
    assert studio.review(probabilities, flip_disagreement=0.05, threshold=0.05).needs_review
    assert studio.review(np.zeros((50, 50), np.float32), flip_disagreement=0.0, threshold=0.05).needs_review


def test_finish_options_name_every_bad_field() -> None:
    with pytest.raises(WireError) as err:
        FinishOptions.parse({"backdrop": "pink", "margin": "0.9", "shadow": "maybe", "size": "1"}, "query")
    message = err.value.message
    assert err.value.status == 400 and message.startswith("bad finish options in query: ")
    for part in (
        "backdrop must be white, black, grey, or #rrggbb; got 'pink'",
        "margin must be a number in [0, 0.45]",
        "shadow must be true or false",
        "unknown option 'size'",
    ):
        assert part in message
    options = FinishOptions.parse({"backdrop": "#0a3cc8", "shadow": "1", "frame": "4:3"}, "query")
    assert options.backdrop == (10, 60, 200) and options.shadow and options.frame == pytest.approx(4 / 3)
    # The header the Lambda sends, read back as the container splits it (tfs-* are the container's).
    header = options.attributes() + ",tfs-model-name=unet,trace=7"  # others' attributes are theirs
    assert finish_options_from_attributes(header) == options
    assert finish_options_from_attributes("carvana-request-id=abc") == FinishOptions()


def turntable(areas: list[float]) -> dict[int, View]:
    """16 views of a car whose box width follows its area (a wide side view, a narrow front); the
    front and rear views are as much narrower than their neighbours as real cars' are."""
    views = {}
    for number, area in enumerate(areas, start=1):
        area_scale, width_scale = FRONT_REAR.get(number, (1.0, 1.0))
        half = area * width_scale  # box half-width grows with the area, height fixed
        views[number] = View(area * area_scale, (0.5 - half, 0.3, 0.5 + half, 0.7))
    return views


def test_car_check_flags_the_view_that_breaks_the_turntable_sequence() -> None:
    angles = np.arange(16) * 2 * np.pi / 16
    areas = list(0.2 + 0.1 * np.sin(angles) ** 2)  # smooth, left-right symmetric
    assert check_car(turntable(areas)) == {}
    areas[5] *= 0.7  # view 06 lost 30 % of its area
    flags = check_car(turntable(areas))
    assert list(flags) == [6] and "area off by" in flags[6][0]
    views = turntable(areas)
    views[11] = View(0.0, None)
    assert check_car(views)[11] == ["no car found"]


def test_car_names_and_common_content() -> None:
    assert car_and_view("0795e132d090_03") == ("0795e132d090", 3)
    assert car_and_view("studio_shot") == ("studio_shot", None)
    assert common_content([(0, 0, 10, 5), None, (2, 2, 8, 12)]) == (10.0, 10.0)
