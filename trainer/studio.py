"""The studio's output: a finished photo (new backdrop, soft clean edge, ground shadow, framing), the
car's box and a "needs review" verdict, from a photo and the ``alpha_png`` signature's answer.

One module for the three places that make finished photos: the endpoint's ``output_handler``
(serving/inference.py, which gets this file vendored as ``code/trainer/studio.py`` beside wire.py),
``carvana predict`` and the bench scripts; the Lambda passes options through and never computes. NumPy
and Pillow only (the inference image installs them from code/requirements.txt), every function pure
with keyword-only options, so a photo finished offline is byte for byte the endpoint's.

The pieces, in the order :func:`finish` runs them:

- :func:`soft_alpha`: the model's full-resolution probabilities (8-bit) -> alpha, a narrow ramp
  around the 0.5 threshold rather than a hard cut, so the edge is feathered over the few pixels where
  the network itself is unsure and exactly 0 / 1 elsewhere (the backdrop stays exactly its colour).
- :func:`decontaminate`: edge pixels are a mix of car and studio backdrop; each gets the colour the car
  has there (the mix solved for the local backdrop colour, blended towards the nearby car colour where
  the car's share is small), so a car on a grey studio floor shows no grey rim on white.
- :func:`ground_shadow`: a contact shadow along the lowest points (the tyres) and a soft elliptic drop
  shadow under the car, darkening the new backdrop only.
- :func:`car_box`, :func:`frame_window`: the car's bounding box and a crop/pad window of a given
  aspect with the car centred and a margin; a fixed ``content`` size keeps all 16 views of a car at one
  scale (trainer/studio_cars.py picks it).
- :func:`review`: per-photo confidence from what the model knows: flip disagreement (1 - Dice of the
  photo's mask against its mirror image's), the share of the car area outside its largest piece
  (fragments), and uncertain pixels per car pixel; ``needs_review`` above a threshold calibrated on
  the validation cars (bench/review_flag.py).
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
from PIL import Image

from trainer.wire import FinishOptions, decode_photo

# soft_alpha's ramp: probabilities below LOW are backdrop (alpha 0), above HIGH car (alpha 1).
ALPHA_LOW, ALPHA_HIGH = 0.3, 0.7
# Probabilities strictly between these count as "uncertain" for the review flag.
UNCERTAIN_LOW, UNCERTAIN_HIGH = 0.1, 0.9
# Pure backdrop / pure car when estimating the two colours an edge pixel mixes.
PURE_BACKDROP, PURE_CAR = 0.02, 0.98
# Colour estimates are averaged over this many pixels around an edge (at full resolution).
COLOUR_RADIUS = 12
# Car and studio colours closer than this (RGB distance) cannot tell an edge pixel's mix apart.
COLOUR_SEPARATION = 24.0
# How much of the uncertain-pixel share counts in the review risk (it is larger than the others
# for a good mask: the edge band of a 1918x1280 car is ~1-2 % of its area).
UNCERTAIN_WEIGHT = 0.25
# Fragments are measured on the mask shrunk to about this many pixels on its long side.
FRAGMENT_SIDE = 240
SHADOW_OPACITY = {"contact": 0.55, "drop": 0.35}


# ---- reading the signature's answer ------------------------------------------------------------


def decode_alpha_png(png: bytes) -> np.ndarray:
    """``alpha_png_bytes`` (8-bit grey PNG, round(255 p)) -> probabilities float32 [H, W] in [0, 1]."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


# ---- small image operations (NumPy only) -------------------------------------------------------


def box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window with edges replicated, by cumulative sums: O(pixels) for any r."""
    out = image.astype(np.float32)
    if radius <= 0:
        return out
    window = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius + 1, radius)
        summed = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float32)
        upper = [slice(None)] * out.ndim
        lower = [slice(None)] * out.ndim
        upper[axis], lower[axis] = slice(window, None), slice(0, -window)
        out = (summed[tuple(upper)] - summed[tuple(lower)]) / window
    return out


def _local_mean(rgb: np.ndarray, weight: np.ndarray, radius: int) -> np.ndarray:
    """Weighted local mean colour: blur(rgb * w) / blur(w), computed at quarter resolution (colour
    estimates are smooth) and brought back by nearest neighbour; NaN-free (weightless areas: 0)."""
    step = 4
    height, width = weight.shape
    small_w = weight[::step, ::step].astype(np.float32)
    small_rgb = rgb[::step, ::step].astype(np.float32)
    r = max(1, radius // step)
    total = box_blur(small_w, r)
    # Spread further where nothing is near, so every edge pixel finds a colour: three passes.
    mean = box_blur(small_rgb * small_w[..., None], r)
    for grow in (4, 16):
        missing = total < 1e-3
        if not missing.any():
            break
        wide_total = box_blur(small_w, r * grow)
        wide_mean = box_blur(small_rgb * small_w[..., None], r * grow)
        total = np.where(missing, wide_total, total)
        mean = np.where(missing[..., None], wide_mean, mean)
    mean = mean / np.maximum(total, 1e-6)[..., None]
    rows = np.minimum(np.arange(height) // step, mean.shape[0] - 1)
    cols = np.minimum(np.arange(width) // step, mean.shape[1] - 1)
    return mean[rows][:, cols]


# ---- the finished photo ------------------------------------------------------------------------


def soft_alpha(probabilities: np.ndarray, *, low: float = ALPHA_LOW, high: float = ALPHA_HIGH) -> np.ndarray:
    """Alpha float32 [H, W]: 0 below ``low``, 1 above ``high``, a smoothstep between (the feathered
    band: where the network's bilinear-upsampled logits cross 0.5, a few pixels wide at 1918x1280)."""
    t = np.clip((probabilities - low) / (high - low), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def decontaminate(
    rgb: np.ndarray, alpha: np.ndarray, *, radius: int = COLOUR_RADIUS
) -> tuple[np.ndarray, np.ndarray]:
    """The car's own colour float32 [H, W, 3] under every pixel with 0 < alpha < 1, and the alpha
    corrected where the colours show the model's edge reaching into the studio.

    An edge pixel shows ``C = c F + (1 - c) B``: car colour F mixed with the studio backdrop B over a
    share c of the pixel. B is the local mean of pure-backdrop pixels and F0 that of pure-car pixels;
    where they differ clearly, c is read from the colour (C's position between B and F0), elsewhere
    (a silver car on a white studio) it is the model's alpha. The alpha never grows (colour is evidence
    of backdrop, not of car: a black car's own shadow looks like car), and ``(C - (1 - c) B) / c`` is
    the car colour, trusted where c is large, F0 where it is small (solving divides by a small c).
    Pixels with alpha 0 or 1 keep their colour and alpha.
    """
    colour = rgb.astype(np.float32)
    alpha = alpha.astype(np.float32, copy=True)
    edge = (alpha > 0) & (alpha < 1)
    if not edge.any():
        return colour, alpha
    backdrop = _local_mean(colour, (alpha <= PURE_BACKDROP).astype(np.float32), radius)[edge]
    car = _local_mean(colour, (alpha >= PURE_CAR).astype(np.float32), radius)[edge]
    observed, model = colour[edge], alpha[edge]
    apart = car - backdrop
    separation = np.sum(apart * apart, axis=1)
    from_colour = np.clip(
        np.sum((observed - backdrop) * apart, axis=1) / np.maximum(separation, 1.0), 0.0, 1.0
    )
    # 0 when car and studio are within ~24 levels of each other, 1 from ~72 apart.
    weight = np.clip((np.sqrt(separation) - COLOUR_SEPARATION) / (2 * COLOUR_SEPARATION), 0.0, 1.0)
    share = weight * from_colour + (1.0 - weight) * model
    solved = np.clip(
        (observed - (1.0 - share[:, None]) * backdrop) / np.maximum(share, 1e-3)[:, None], 0.0, 255.0
    )
    trust = np.clip((share - 0.3) / 0.4, 0.0, 1.0)[:, None]
    colour[edge] = trust * solved + (1.0 - trust) * car
    alpha[edge] = np.minimum(model, share)
    return colour, alpha


def car_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` (x1, y1 exclusive) of the pixels with alpha >= 0.5; None for no car."""
    car = alpha >= 0.5
    rows, cols = np.flatnonzero(car.any(axis=1)), np.flatnonzero(car.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def box_fields(box: tuple[int, int, int, int] | None, width: int, height: int) -> dict[str, object] | None:
    """The box as the JSON answer and the CSV give it: pixels and relative to the photo's size."""
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return {
        "x": x0,
        "y": y0,
        "width": x1 - x0,
        "height": y1 - y0,
        "relative": {
            "x": round(x0 / width, 5),
            "y": round(y0 / height, 5),
            "width": round((x1 - x0) / width, 5),
            "height": round((y1 - y0) / height, 5),
        },
    }


class Window(NamedTuple):
    """A crop of the photo (may reach past its sides: padded), in photo pixels."""

    left: int
    top: int
    width: int
    height: int


def frame_window(
    box: tuple[int, int, int, int],
    *,
    aspect: float,
    margin: float,
    content: tuple[float, float] | None = None,
) -> Window:
    """The crop of ``aspect`` (width/height) centred on ``box`` leaving ``margin`` of the frame on the
    tighter sides. ``content`` (width, height) replaces the box's own size, so views framed with the
    same ``content`` share one scale (the largest box of the car fits them all)."""
    x0, y0, x1, y1 = box
    content_w, content_h = content or (x1 - x0, y1 - y0)
    width, height = content_w / (1 - 2 * margin), content_h / (1 - 2 * margin)
    width, height = max(width, height * aspect), max(height, width / aspect)
    width_px, height_px = round(width), round(height)
    left = round((x0 + x1) / 2 - width_px / 2)
    top = round((y0 + y1) / 2 - height_px / 2)
    return Window(left, top, max(1, width_px), max(1, height_px))


def crop(image: np.ndarray, window: Window, *, pad: str) -> np.ndarray:
    """``image`` [H, W, ...] cut to ``window``, padded past the photo's sides by ``pad`` (``"edge"``
    repeats the border, ``"zero"`` fills 0: alpha there is no car)."""
    height, width = image.shape[:2]
    before_y, before_x = max(0, -window.top), max(0, -window.left)
    after_y = max(0, window.top + window.height - height)
    after_x = max(0, window.left + window.width - width)
    inner = image[
        max(0, window.top) : min(height, window.top + window.height),
        max(0, window.left) : min(width, window.left + window.width),
    ]
    if inner.size == 0:
        return np.zeros((window.height, window.width, *image.shape[2:]), image.dtype)
    widths = [(before_y, after_y), (before_x, after_x)] + [(0, 0)] * (image.ndim - 2)
    if pad == "edge":
        return np.pad(inner, widths, mode="edge")
    return np.pad(inner, widths, mode="constant")


def ground_shadow(alpha: np.ndarray, *, opacity: dict[str, float] | None = None) -> np.ndarray:
    """Shadow strength float32 [H, W] in [0, 1) on the floor under the car (0 where there is none).

    Contact: a thin dark line under the columns whose lowest car pixel is within 2 % of the car's
    height of the lowest one near them (the tyres, near and far), blurred a little. Drop: a soft
    ellipse as wide as the car and 7 % of its height tall, centred on that floor line.
    """
    opacity = opacity or SHADOW_OPACITY
    box = car_box(alpha)
    height, width = alpha.shape
    shadow = np.zeros((height, width), np.float32)
    if box is None:
        return shadow
    x0, y0, x1, y1 = box
    car_h, car_w = y1 - y0, x1 - x0
    car = alpha >= 0.5
    lowest = np.where(car.any(axis=0), height - 1 - np.argmax(car[::-1], axis=0), -1)
    floor = y1 - 1
    # Seen from above the floor, the far tyres sit higher in the photo than the near ones: a column
    # touches the floor where its lowest car pixel is (nearly) the lowest around it.
    reach = max(1, car_w // 12)
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(lowest, reach, constant_values=-1), 2 * reach + 1
    )
    contact_cols = (lowest >= 0) & (lowest >= windows.max(axis=1) - max(1, round(0.02 * car_h)))
    thickness = max(2, round(0.012 * car_h))
    rx, ry = 0.55 * car_w, max(2.0, 0.07 * car_h)
    # Only the floor's band of rows can be shadowed: compute there.
    top = max(0, int(lowest[contact_cols].min()) - 2 * thickness)
    bottom = min(height, floor + round(ry) + 2 * thickness + 1)
    rows = np.arange(top, bottom)[:, None]
    line = (np.abs(rows - lowest[None, :]) <= thickness) & contact_cols[None, :]
    contact = box_blur(line.astype(np.float32), max(1, thickness)) * opacity["contact"]
    cols = np.arange(width)[None, :]
    r2 = ((cols - (x0 + x1) / 2) / rx) ** 2 + ((rows - floor) / ry) ** 2
    drop = np.clip(1.0 - r2, 0.0, 1.0) ** 2 * opacity["drop"]
    shadow[top:bottom] = 1.0 - (1.0 - contact) * (1.0 - drop)
    return shadow


def backdrop_pixels(options: FinishOptions, height: int, width: int) -> np.ndarray:
    """The new backdrop float32 [H, W, 3]: the colour, or the backdrop image scaled to fill the frame
    (covering it, centred, the overflow cut) when one is given."""
    if options.backdrop_image is None:
        return np.broadcast_to(np.asarray(options.backdrop, np.float32), (height, width, 3))
    with Image.open(io.BytesIO(options.backdrop_image)) as image:
        rgb = image.convert("RGB")
        scale = max(width / rgb.width, height / rgb.height)
        size = (max(width, round(rgb.width * scale)), max(height, round(rgb.height * scale)))
        resized = rgb.resize(size, Image.Resampling.LANCZOS)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        return np.asarray(resized.crop((left, top, left + width, top + height)), np.float32)


class Finished(NamedTuple):
    """A finished photo and what was measured on the way."""

    image: np.ndarray  # uint8 RGB [h, w, 3] (the frame's size, else the photo's)
    box: tuple[int, int, int, int] | None  # in the photo's pixels
    window: Window | None  # the frame's crop, None when not framed


def finish_pixels(
    rgb: np.ndarray,
    probabilities: np.ndarray,
    *,
    options: FinishOptions,
    content: tuple[float, float] | None = None,
) -> Finished:
    """The finished photo from the displayed photo [H, W, 3] and its probabilities [H, W].

    ``content`` (the car's largest box, width and height) frames at the scale of the car's other views.
    """
    if rgb.shape[:2] != probabilities.shape:
        raise ValueError(f"probabilities are {probabilities.shape} but the photo is {rgb.shape[:2]}")
    colour, alpha = decontaminate(rgb, soft_alpha(probabilities))
    box = car_box(alpha)
    window = None
    if options.frame is not None and box is not None:
        window = frame_window(box, aspect=options.frame, margin=options.margin, content=content)
        colour, alpha = crop(colour, window, pad="edge"), crop(alpha, window, pad="zero")
    height, width = alpha.shape
    backdrop = backdrop_pixels(options, height, width)
    if options.shadow:
        backdrop = backdrop * (1.0 - ground_shadow(alpha))[..., None]
    out = alpha[..., None] * colour + (1.0 - alpha[..., None]) * backdrop
    return Finished(np.clip(np.rint(out), 0, 255).astype(np.uint8), box, window)


def encode_image(image: np.ndarray, *, jpeg: bool, quality: int) -> bytes:
    """uint8 RGB -> JPEG (4:4:4 so coloured edges stay sharp) or PNG bytes."""
    out = io.BytesIO()
    if jpeg:
        Image.fromarray(image).save(out, format="JPEG", quality=quality, subsampling=0)
    else:
        Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


# ---- needs review ------------------------------------------------------------------------------


def _components_share(mask: np.ndarray) -> float:
    """Share of the mask's pixels outside its largest 4-connected piece (0 for one piece).

    Labels spread by repeated min over the 4 neighbours with pointer jumping, on a mask already
    shrunk to FRAGMENT_SIDE pixels, so a few dozen NumPy passes label it.
    """
    total = int(mask.sum())
    if total == 0:
        return 0.0
    height, width = mask.shape
    big = height * width
    labels = np.where(mask, np.arange(big).reshape(height, width), big)
    for _ in range(4 * (height + width)):
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce(
            [labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        )
        new = np.where(mask, neighbours, big)
        flat = new.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # jump: take the label's own label
        if np.array_equal(new, labels):
            break
        labels = new
    counts = np.bincount(labels[mask].ravel())
    return float(1.0 - counts.max() / total)


class Review(NamedTuple):
    """The review verdict and the three signals it is made of (all 0 for a clean, confident mask)."""

    needs_review: bool
    confidence: float  # 1 - risk, clipped to [0, 1]
    risk: float
    flip_disagreement: float  # 1 - Dice(mask, mask of the mirror image flipped back)
    fragments: float  # share of the car area outside its largest piece
    uncertain: float  # pixels with 0.1 < p < 0.9 per car pixel

    def fields(self) -> dict[str, object]:
        return {
            "needs_review": self.needs_review,
            "confidence": round(self.confidence, 5),
            "flip_disagreement": round(self.flip_disagreement, 5),
            "fragments": round(self.fragments, 5),
            "uncertain": round(self.uncertain, 5),
        }


def review_risk(*, flip_disagreement: float, fragments: float, uncertain: float) -> float:
    """One number per photo, on the scale of 1 - Dice: each signal estimates the mislabelled share."""
    return flip_disagreement + fragments + UNCERTAIN_WEIGHT * uncertain


def review(probabilities: np.ndarray, *, flip_disagreement: float, threshold: float) -> Review:
    """The verdict for one photo's probabilities and its flip disagreement (from ``alpha_png``)."""
    car = probabilities > 0.5
    area = max(int(car.sum()), 1)
    uncertain = float(((probabilities > UNCERTAIN_LOW) & (probabilities < UNCERTAIN_HIGH)).sum()) / area
    step = max(1, max(car.shape) // FRAGMENT_SIDE)
    fragments = _components_share(car[::step, ::step])
    risk = review_risk(flip_disagreement=flip_disagreement, fragments=fragments, uncertain=uncertain)
    if not car.any():
        risk = 1.0  # no car at all is always worth a look
    return Review(
        risk > threshold, float(np.clip(1.0 - risk, 0.0, 1.0)), risk, flip_disagreement, fragments, uncertain
    )


# ---- one photo, end to end (the endpoint's and predict's entry point) --------------------------


class Studio(NamedTuple):
    """Everything the studio learns about one photo from the ``alpha_png`` signature's answer."""

    probabilities: np.ndarray
    box: tuple[int, int, int, int] | None
    review: Review

    def fields(self) -> dict[str, object]:
        """The JSON answer's (and the CSV's) ``box`` and ``review`` fields."""
        height, width = self.probabilities.shape
        return {"box": box_fields(self.box, width, height), "review": self.review.fields()}


def analyse(alpha_png: bytes, *, flip_disagreement: float, options: FinishOptions) -> Studio:
    """Box and review verdict of one photo from its ``alpha_png_bytes`` and ``flip_disagreement``."""
    probabilities = decode_alpha_png(alpha_png)
    verdict = review(probabilities, flip_disagreement=flip_disagreement, threshold=options.review_threshold)
    return Studio(probabilities, car_box(soft_alpha(probabilities)), verdict)


def finish(
    photo: bytes,
    probabilities: np.ndarray,
    *,
    options: FinishOptions,
    jpeg: bool,
    content: tuple[float, float] | None = None,
) -> bytes:
    """The finished photo's JPEG/PNG bytes for the photo's bytes and its probabilities."""
    finished = finish_pixels(decode_photo(photo), probabilities, options=options, content=content)
    return encode_image(finished.image, jpeg=jpeg, quality=options.quality)
