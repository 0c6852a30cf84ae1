"""Before/after grid of finished photos on real Carvana photos (docs/finished_grid.jpg in the README).

Picks, among the cars of ``--manifest``'s split (never trained on), the darkest car and the most
silver one (bright, unsaturated: the hardest against a white or grey studio), by their true masks'
mean colour; the rows are those cars at two angles. Columns: the photo as shot; finished on white with
the ground shadow; finished on a dark backdrop; framed 4:3 on white with the shadow; and a 3x close-up
of an edge on white, where a grey studio rim would show. Every finished photo comes from the model's
``alpha_png`` signature and trainer/studio.py, as the endpoint and ``carvana predict`` make them.

Usage: ``python bench/studio_grid.py --model runs/m192/model --data ../shared/carvana
--manifest runs/real-192x288 [--out docs/finished_grid.jpg]``
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainer import studio
from trainer.data.layout import read_mask
from trainer.evaluate import EvaluateConfig, select_photos
from trainer.saved_model_io import open_model
from trainer.wire import FinishOptions

TILE_WIDTH = 420
COLUMNS = ("photo as shot", "white + shadow", "dark backdrop", "framed 4:3 + shadow", "edge close-up (3x)")


def car_colours(photos: list) -> dict[str, tuple[float, float]]:
    """Per car (brightness, saturation) of its 3rd view's true car pixels."""
    colours = {}
    for photo in photos:
        if photo.angle != 3:
            continue
        with Image.open(photo.image_path) as image:
            rgb = np.asarray(image.convert("RGB"), np.float32)
        car = read_mask(photo, rgb.shape[:2]) > 0
        pixels = rgb[car]
        colours[photo.car_id] = (float(pixels.mean()), float((pixels.max(1) - pixels.min(1)).mean()))
    return colours


def tile(image: np.ndarray, width: int = TILE_WIDTH) -> Image.Image:
    picture = Image.fromarray(image)
    return picture.resize((width, round(picture.height * width / picture.width)), Image.Resampling.LANCZOS)


def close_up(finished: np.ndarray, probabilities: np.ndarray, height: int) -> Image.Image:
    """A 3x crop (nearest neighbour) around the edge point at the car's top centre."""
    box = studio.car_box(studio.soft_alpha(probabilities))
    assert box is not None
    x0, _, x1, _ = box
    centre_x = (x0 + x1) // 2
    column = probabilities[:, centre_x]
    top = int(np.argmax(column >= 0.5))
    size_w, size_h = TILE_WIDTH // 3, height // 3
    left, upper = max(0, centre_x - size_w // 2), max(0, top - size_h // 2)
    crop = Image.fromarray(finished).crop((left, upper, left + size_w, upper + size_h))
    return crop.resize((size_w * 3, size_h * 3), Image.Resampling.NEAREST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--angles", default="03,10", help="views per car, e.g. 03,10")
    parser.add_argument("--out", default="docs/finished_grid.jpg")
    args = parser.parse_args(argv)

    photos = select_photos(
        EvaluateConfig(
            Path(args.model), Path(args.data), Path("."), manifest=Path(args.manifest), split=args.split
        )
    )
    colours = car_colours(photos)
    darkest = min(colours, key=lambda car: colours[car][0])
    silver = max((c for c in colours if c != darkest), key=lambda car: colours[car][0] - 2 * colours[car][1])
    angles = [int(a) for a in args.angles.split(",")]
    chosen = [p for car in (silver, darkest) for p in photos if p.car_id == car and p.angle in angles]
    white_shadow = FinishOptions(shadow=True)
    dark = FinishOptions(backdrop=(38, 40, 46), shadow=True)
    framed = FinishOptions(shadow=True, frame=4 / 3, margin=0.06)
    rows = []
    with open_model(args.model) as model:
        answers = model.alphas([p.image_path.read_bytes() for p in chosen])
    for photo, answer in zip(chosen, answers, strict=True):
        rgb = studio.decode_photo(photo.image_path.read_bytes())
        probabilities = studio.decode_alpha_png(answer["alpha_png_bytes"])
        on_white = studio.finish_pixels(rgb, probabilities, options=white_shadow).image
        cells = [
            tile(rgb),
            tile(on_white),
            tile(studio.finish_pixels(rgb, probabilities, options=dark).image),
            tile(studio.finish_pixels(rgb, probabilities, options=framed).image),
        ]
        cells.append(close_up(on_white, probabilities, cells[0].height))
        rows.append((photo.image_path.stem, cells))
        print(f"{photo.image_path.name}: colour (brightness, saturation) {colours[photo.car_id]}")

    label_h, gap = 22, 6
    row_h = max(c.height for _, cells in rows for c in cells)
    width = len(COLUMNS) * (TILE_WIDTH + gap) + gap
    grid = Image.new("RGB", (width, label_h + len(rows) * (row_h + label_h + gap) + gap), (250, 250, 250))
    draw = ImageDraw.Draw(grid)
    for column, name in enumerate(COLUMNS):
        draw.text((gap + column * (TILE_WIDTH + gap), 5), name, fill=(0, 0, 0))
    for index, (stem, cells) in enumerate(rows):
        top = label_h + index * (row_h + label_h + gap)
        draw.text((gap, top + 4), stem, fill=(0, 0, 0))
        for column, cell in enumerate(cells):
            grid.paste(cell, (gap + column * (TILE_WIDTH + gap), top + label_h))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    grid.save(buffer, format="JPEG", quality=88)
    out.write_bytes(buffer.getvalue())
    print(f"grid of {len(rows)} photos -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
