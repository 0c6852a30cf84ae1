"""A synthetic car on a turntable: the 3-D model and renderer behind ``carvana make-sample``.

Each car is a small 3-D model (an extruded side profile for the body, a narrower extruded cabin with
glass, four wheel cylinders, lights) turned on a turntable and projected orthographically from a
slightly raised camera, so the silhouette changes with the angle as in the real photos: long from the
side (angles 05 and 13), short from the front (01) and back (09). Faces are flat-shaded with a studio
light and a specular term, the side gets a highlight streak, the backdrop is a cyclorama with a soft
floor shadow, and every fourth car has the backdrop's colour (the hard case for background removal).
Masks are the union of exactly the polygons painted for the car, so photo and mask agree by
construction. Drawing is vectorised (PIL polygon fills and blurs, NumPy for geometry).

Kept apart from :mod:`trainer.data.sample`, which only lays the drawings out in Kaggle's folders.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

ANGLES = 16
GIF_PALETTE = [0, 0, 0, 255, 255, 255]  # Kaggle's GIFs: index 0 black, 1 white, nothing else

# Body types: (make, model, length m, roof height m, belt height m, wheel radius m, width m,
# windshield base, roof front, roof rear, rear-window base) -- the last four as fractions of the
# length measured from the front bumper.
BODY_TYPES = (
    ("Synthetic", "Sedan", 4.7, 1.45, 0.95, 0.32, 1.82, 0.30, 0.45, 0.69, 0.81),
    ("Synthetic", "Coupe", 4.4, 1.30, 0.90, 0.33, 1.80, 0.33, 0.50, 0.63, 0.86),
    ("Synthetic", "Hatchback", 4.0, 1.48, 0.95, 0.31, 1.75, 0.29, 0.43, 0.83, 0.97),
    ("Synthetic", "SUV", 4.7, 1.74, 1.10, 0.37, 1.92, 0.23, 0.36, 0.91, 0.99),
    ("Synthetic", "Pickup", 5.3, 1.85, 1.15, 0.38, 1.95, 0.26, 0.38, 0.55, 0.58),
    ("Synthetic", "Van", 4.9, 1.95, 1.05, 0.33, 1.90, 0.12, 0.23, 0.96, 0.99),
)
PAINTS = (
    (200, 30, 35),
    (25, 60, 150),
    (40, 42, 46),
    (150, 155, 160),
    (20, 90, 60),
    (230, 190, 40),
    (120, 20, 30),
    (90, 110, 130),
    (210, 120, 40),
    (60, 60, 65),
    (240, 240, 238),
    (180, 170, 150),
)
BACKDROPS = ((238, 238, 240), (232, 233, 236), (242, 240, 236), (226, 228, 231))
TYRE, RIM, GLASS = (28, 28, 30), (175, 177, 182), (34, 42, 54)
HEADLIGHT, TAILLIGHT = (235, 235, 225), (170, 20, 25)


@dataclass(frozen=True)
class CarSpec:
    """One synthetic car and how it is photographed (all random choices made up front, from the seed)."""

    car_id: str
    make: str
    model: str
    year: int
    length: float
    width: float
    roof: float
    belt: float
    wheel_radius: float
    cabin: tuple[float, float, float, float]
    paint: tuple[int, int, int]
    backdrop: tuple[int, int, int]
    fill: float  # side-view length as a fraction of the photo width
    elevation: float  # camera elevation, radians
    shift: tuple[float, float]  # small framing offset, fractions of the photo size


def _four(values: Iterable[float]) -> tuple[float, float, float, float]:
    a, b, c, d = values
    return a, b, c, d


def _rgb(values: Iterable[int]) -> tuple[int, int, int]:
    r, g, b = values
    return r, g, b


def make_cars(count: int, seed: int) -> list[CarSpec]:
    """Draw ``count`` car specs; the same seed always gives the same cars (and ids)."""
    rng = np.random.default_rng(seed)
    cars, ids = [], set()
    for index in range(count):
        make, model, length, roof, belt, wheel, width, *cabin = BODY_TYPES[rng.integers(len(BODY_TYPES))]
        car_id = rng.bytes(6).hex()
        while car_id in ids:
            car_id = rng.bytes(6).hex()
        ids.add(car_id)
        backdrop = BACKDROPS[rng.integers(len(BACKDROPS))]
        # Every fourth car (the third of each four) is painted the backdrop's colour.
        paint = backdrop if index % 4 == 2 else PAINTS[rng.integers(len(PAINTS))]
        jitter = rng.uniform(-0.04, 0.04, size=4)
        cars.append(
            CarSpec(
                car_id=car_id,
                make=make,
                model=model,
                year=int(rng.integers(2008, 2018)),
                length=length * rng.uniform(0.93, 1.07),
                width=width * rng.uniform(0.96, 1.04),
                roof=roof * rng.uniform(0.95, 1.05),
                belt=belt * rng.uniform(0.96, 1.04),
                wheel_radius=wheel * rng.uniform(0.92, 1.08),
                cabin=_four(float(np.clip(c + j, 0.05, 0.95)) for c, j in zip(cabin, jitter, strict=True)),
                paint=_rgb(int(v) for v in paint),
                backdrop=backdrop,
                fill=float(rng.uniform(0.68, 0.82)),
                elevation=float(np.radians(rng.uniform(6.0, 13.0))),
                shift=(float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02))),
            )
        )
    return cars


def render(
    spec: CarSpec, angle: int, height: int, width: int, backdrop: Image.Image | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw photo ``angle`` (1..16) of a car: uint8 RGB ``(H, W, 3)`` and uint8 mask {0, 1} ``(H, W)``."""
    if backdrop is None:
        backdrop = studio_backdrop(spec, height, width)
    photo, mask = draw(spec, angle, height, width, backdrop)
    return np.asarray(photo), np.asarray(mask)


def studio_backdrop(spec: CarSpec, height: int, width: int) -> Image.Image:
    """The cyclorama: a bright wall curving into a slightly darker floor, with a soft vignette."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)
    horizon = 0.55 + spec.shift[1]
    wall = 1.0 - 0.05 * rows
    floor = 0.93 - 0.06 * np.clip((rows - horizon) / (1 - horizon), 0, 1)
    blend = 1 / (1 + np.exp(-(rows - horizon) / 0.04))
    row_gain = wall * (1 - blend) + floor * blend
    cols = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    col_gain = 1.0 - 0.05 * cols**2
    gain = row_gain[:, None, None] * col_gain[None, :, None]
    return Image.fromarray(np.clip(gain * np.asarray(spec.backdrop, np.float32), 0, 255).astype(np.uint8))


# --- geometry ------------------------------------------------------------------------------------


class _Camera:
    """Orthographic turntable camera: rotates the car by the angle, projects to pixels, sorts by depth."""

    def __init__(self, spec: CarSpec, angle: int, height: int, width: int) -> None:
        phi = np.radians((angle - 1) * 360.0 / ANGLES)  # angle 01 faces the camera, 05 shows the side
        self.sin, self.cos = np.sin(phi), np.cos(phi)
        self.se, self.ce = np.sin(spec.elevation), np.cos(spec.elevation)
        self.scale = spec.fill * width / spec.length
        # Keep the tallest view inside the frame too.
        self.scale = min(self.scale, 0.55 * height / (spec.roof + spec.width * self.se))
        self.u0 = width * (0.5 + spec.shift[0])
        self.v0 = height * (0.80 + spec.shift[1])

    def world(self, points: np.ndarray) -> np.ndarray:
        """Car frame (x forward, y left, z up) -> world (U right, D away from camera, Z up)."""
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        return np.stack([x * self.sin + y * self.cos, -x * self.cos + y * self.sin, z], axis=-1)

    def pixels(self, points: np.ndarray) -> list[tuple[float, float]]:
        w = self.world(points)
        u = self.u0 + self.scale * w[..., 0]
        v = self.v0 - self.scale * (w[..., 1] * self.se + w[..., 2] * self.ce)
        return list(zip(u.tolist(), v.tolist(), strict=True))

    def depth(self, points: np.ndarray) -> float:
        w = self.world(points).reshape(-1, 3).mean(axis=0)
        return float(w[1] * self.ce - w[2] * self.se)

    def facing(self, normal: np.ndarray) -> float:
        """Cosine between a car-frame normal and the direction to the camera (> 0: visible)."""
        n = self.world(normal)
        return float(-n[1] * self.ce + n[2] * self.se)

    def near_side(self) -> float:
        """The car side facing the camera (-1 or +1), or 0 in the straight front and back views."""
        return next((s for s in (-1.0, 1.0) if self.facing(np.array([0.0, s, 0.0])) > 0.05), 0.0)

    def light(self, normal: np.ndarray) -> tuple[float, float]:
        """Diffuse + specular factor for a studio light above and to the front-left of the camera."""
        n = self.world(normal)
        light = np.array([-0.35, -0.55, 0.76])
        half = light + np.array([0.0, -self.ce, self.se])
        half /= np.linalg.norm(half)
        diffuse = max(float(n @ light), 0.0)
        specular = max(float(n @ half), 0.0) ** 40
        return 0.6 + 0.45 * diffuse, specular


def _chaikin(points: np.ndarray, iterations: int = 2, closed: bool = True) -> np.ndarray:
    """Round a polygon's corners (Chaikin corner cutting); open chains keep their end points."""
    for _ in range(iterations):
        nxt = np.roll(points, -1, axis=0) if closed else points[1:]
        cur = points if closed else points[:-1]
        q, r = 0.75 * cur + 0.25 * nxt, 0.25 * cur + 0.75 * nxt
        cut = np.stack([q, r], axis=1).reshape(-1, 2)
        points = cut if closed else np.vstack([points[:1], cut, points[-1:]])
    return points


def _profiles(spec: CarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Side profiles (x, z) of the lower body (closed) and the cabin (closed, base on the belt line)."""
    half, clear, belt, roof = spec.length / 2, spec.wheel_radius * 0.55, spec.belt, spec.roof
    ws, rf, rr, rw = (half - f * spec.length for f in spec.cabin)
    nose = clear + 0.55 * (belt - clear)
    body = [
        (-half + 0.2, clear),
        (half - 0.25, clear),
        (half, clear + 0.15),
        (half, nose),
        (half - 0.12, belt - 0.08),
        (ws, belt),
    ]
    if rw - (-half) > 0.3:  # a boot behind the rear window
        body += [(rw, belt), (-half + 0.1, belt - 0.02)]
    body += [(-half, belt - 0.12), (-half, clear + 0.15)]
    cabin_top = _chaikin(np.array([(ws, belt), (rf, roof), (rr, roof), (rw, belt)]), 2, closed=False)
    return _chaikin(np.array(body), 2), cabin_top


def _faces(profile: np.ndarray, half_width: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The side faces swept by each edge of a counter-clockwise (x, z) profile extruded over +-y."""
    faces = []
    nxt = np.roll(profile, -1, axis=0)
    for (x1, z1), (x2, z2) in zip(profile, nxt, strict=True):
        length = np.hypot(x2 - x1, z2 - z1)
        if length < 1e-6:
            continue
        normal = np.array([(z2 - z1) / length, 0.0, -(x2 - x1) / length])
        quad = np.array(
            [(x1, -half_width, z1), (x2, -half_width, z2), (x2, half_width, z2), (x1, half_width, z1)]
        )
        faces.append((quad, normal))
    return faces


def _at_y(profile: np.ndarray, y: float) -> np.ndarray:
    return np.column_stack([profile[:, 0], np.full(len(profile), y), profile[:, 1]])


def _shade(colour: tuple[int, int, int], factors: tuple[float, float], gloss: float = 1.0) -> tuple[int, ...]:
    diffuse, specular = factors
    return tuple(int(min(255, c * diffuse + 255 * gloss * 0.8 * specular)) for c in colour)


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of 2-D points (monotone chain), used for the swept wheel cylinders."""
    pts = sorted(map(tuple, points.tolist()))

    def half(seq: list) -> list:
        out: list = []
        for p in seq:
            while (
                len(out) >= 2
                and (
                    (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                    - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])
                )
                <= 0
            ):
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def draw(
    spec: CarSpec, angle: int, height: int, width: int, backdrop: Image.Image
) -> tuple[Image.Image, Image.Image]:
    """Photo ``angle`` (1..16) as a PIL RGB image and its mask as a palette image (Kaggle's GIF palette)."""
    cam = _Camera(spec, angle, height, width)
    photo = backdrop.copy()
    _floor_shadow(photo, spec, cam)
    mask = Image.new("P", (width, height), 0)
    mask.putpalette(GIF_PALETTE)
    draw, mdraw = ImageDraw.Draw(photo), ImageDraw.Draw(mask)

    def paint(points: np.ndarray, colour: tuple[int, ...], *, hull: bool = False) -> None:
        """Fill a car polygon in the photo and the same pixels in the mask (hull: its 2-D outline)."""
        xy = cam.pixels(points)
        if hull:
            xy = [tuple(p) for p in _hull(np.asarray(xy)).tolist()]
        draw.polygon(xy, fill=colour)
        mdraw.polygon(xy, fill=1)

    body, cabin = _profiles(spec)
    half_w, cabin_w = spec.width / 2, spec.width * 0.42
    near = cam.near_side()
    wheels = _wheels(spec)

    # Painter's algorithm: far wheels, every visible face far to near, the side panel facing the
    # camera with its windows, the lights, then the near wheels (seen through their arches).
    for side, tyre, _ in wheels:
        if side != near:
            paint(tyre, TYRE, hull=True)
    faces = [(q, n, spec.paint, 1.0) for q, n in _faces(body, half_w)]
    for quad, normal in _faces(cabin, cabin_w):
        roof = normal[2] > 0.85
        faces.append((quad, normal, spec.paint if roof else GLASS, 1.0 if roof else 1.6))
    visible = [(cam.depth(q), q, n, c, g) for q, n, c, g in faces if cam.facing(n) > 1e-3]
    for _, quad, normal, colour, gloss in sorted(visible, key=lambda f: -f[0]):
        paint(quad, _shade(colour, cam.light(normal), gloss))
    if near:
        side_light = cam.light(np.array([0.0, near, 0.0]))
        paint(_at_y(body, near * half_w), _shade(spec.paint, side_light))
        paint(_at_y(cabin, near * cabin_w), _shade(spec.paint, side_light))
        for window in _windows(cabin, spec):
            paint(_at_y(window, near * (cabin_w + 0.01)), _shade(GLASS, side_light, 1.6))
    _lights(spec, cam, paint)
    for side, tyre, rim in wheels:
        if side == near:
            paint(tyre, TYRE, hull=True)
            paint(rim, _shade(RIM, side_light))

    _car_finish(photo, mask, spec, cam)
    return photo.filter(ImageFilter.GaussianBlur(0.6 * max(width, 640) / 1918)), mask


def _wheels(spec: CarSpec) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Per wheel: its side (-1/+1), the tyre's two end discs (painted as their hull) and the rim disc."""
    r, half, tread = spec.wheel_radius, spec.length / 2, 0.24
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    wheels = []
    for x in (half - 0.2 * spec.length, -half + 0.2 * spec.length):
        for side in (-1.0, 1.0):
            y_out = side * (spec.width / 2 - 0.02)
            disc = np.column_stack([x + r * np.cos(t), np.full_like(t, y_out), r + r * np.sin(t)])
            inner = disc + np.array([0.0, -side * tread, 0.0])
            rim = np.column_stack(
                [x + 0.6 * r * np.cos(t), np.full_like(t, y_out + side * 0.005), r + 0.6 * r * np.sin(t)]
            )
            wheels.append((side, np.concatenate([disc, inner]), rim))
    return wheels


def _windows(cabin: np.ndarray, spec: CarSpec) -> list[np.ndarray]:
    """Side windows: the cabin outline shrunk toward its centre, split by one or two pillars."""
    centre = cabin.mean(axis=0)
    glass = centre + 0.8 * (cabin - centre)
    order = np.argsort(glass[:, 0])
    xs, zs = glass[order, 0], glass[order, 1]
    bottom = spec.belt + 0.06
    pillars = 2 if (xs[-1] - xs[0]) > 0.45 * spec.length else 1
    edges = np.linspace(xs[0], xs[-1], pillars + 2)
    edges = np.concatenate([edges[:1], np.repeat(edges[1:-1], 2), edges[-1:]]).reshape(-1, 2)
    windows = []
    for lo, hi in edges:
        x = np.linspace(lo + 0.04, hi - 0.04, 12)
        top = np.maximum(np.interp(x, xs, zs), bottom)
        windows.append(
            np.concatenate([np.column_stack([x, top]), [(hi - 0.04, bottom), (lo + 0.04, bottom)]])
        )
    return windows


def _lights(spec: CarSpec, cam: _Camera, paint) -> None:
    """Headlights on the nose and tail lights on the rear, when that end faces the camera."""
    half, clear = spec.length / 2, spec.wheel_radius * 0.55
    z_top = clear + 0.5 * (spec.belt - clear)
    for end, colour in ((1.0, HEADLIGHT), (-1.0, TAILLIGHT)):
        if cam.facing(np.array([end, 0.0, 0.0])) <= 0.05:
            continue
        x = end * (half - 0.01)
        for side in (-1.0, 1.0):
            y0, y1 = side * spec.width * 0.28, side * spec.width * 0.42
            quad = np.array([(x, y0, z_top - 0.12), (x, y1, z_top - 0.12), (x, y1, z_top), (x, y0, z_top)])
            paint(quad, colour)


def _floor_shadow(photo: Image.Image, spec: CarSpec, cam: _Camera) -> None:
    """Darken the floor under the car: a blurred footprint drawn at 1/8 scale, then upscaled."""
    width, height = photo.size
    k = 8
    small = Image.new("L", (max(width // k, 1), max(height // k, 1)), 0)
    half_l, half_w = spec.length / 2 + 0.15, spec.width / 2 + 0.1
    corners = np.array(
        [(half_l, half_w, 0), (-half_l, half_w, 0), (-half_l, -half_w, 0), (half_l, -half_w, 0)]
    )
    xy = [(u / k, v / k) for u, v in cam.pixels(corners)]
    ImageDraw.Draw(small).polygon(xy, fill=210)
    small = small.filter(ImageFilter.GaussianBlur(max(cam.scale * 0.18 / k, 0.5)))
    alpha = small.resize(photo.size, Image.Resampling.BILINEAR)
    dark = photo.point(lambda value: int(value * 0.3))
    photo.paste(Image.composite(dark, photo, alpha))


def _car_finish(photo: Image.Image, mask: Image.Image, spec: CarSpec, cam: _Camera) -> None:
    """Inside the mask only: darken toward the ground (occlusion) and add a blurred highlight streak."""
    width, height = photo.size
    alpha = mask.point(lambda value: 255 if value else 0, mode="L")
    rows = np.linspace(0, 1, height, dtype=np.float32)
    ground = cam.v0 / height
    gain = 1.0 - 0.35 * np.clip((rows - (ground - 0.25)) / 0.25, 0, 1)
    shade = Image.fromarray(np.repeat((gain * 255).astype(np.uint8)[:, None], width, axis=1), "L")
    shaded = ImageChops.multiply(photo, Image.merge("RGB", (shade, shade, shade)))
    photo.paste(Image.composite(shaded, photo, alpha))

    k = 4
    glow = Image.new("L", (max(width // k, 1), max(height // k, 1)), 0)
    z = spec.belt - 0.12
    x0, x1 = -spec.length * 0.3, spec.length * 0.3
    near = cam.near_side()
    for y in [near * spec.width / 2] if near else []:
        streak = np.array([(x0, y, z), (x1, y, z), (x1, y, z + 0.05), (x0, y, z + 0.05)])
        ImageDraw.Draw(glow).polygon([(u / k, v / k) for u, v in cam.pixels(streak)], fill=110)
    glow = glow.filter(ImageFilter.GaussianBlur(max(cam.scale * 0.04 / k, 0.5))).resize(
        photo.size, Image.Resampling.BILINEAR
    )
    glow = ImageChops.multiply(glow, alpha)
    photo.paste(ImageChops.add(photo, Image.merge("RGB", (glow, glow, glow))))
