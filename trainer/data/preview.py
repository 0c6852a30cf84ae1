"""``carvana preview``: a PNG grid of one pipeline batch with the masks overlaid.

The quickest check that conversion and the pipeline agree with the photos: every tile shows what the
model will be fed (augmented, for the train split, unless ``--no-augment``), the mask tinted red
with its outline in yellow, so a shifted or flipped mask is visible at a glance.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.atomic import atomic_path
from trainer.command import UsageError, run_command
from trainer.data.layout import parse_size

TINT = np.array([1.0, 0.1, 0.1], np.float32)
OUTLINE = np.array([1.0, 0.9, 0.0], np.float32)
GAP = 4


@dataclass(frozen=True)
class PreviewConfig:
    """Which split to show, how many photos, at what size, with or without augmentation.

    ``size`` has no default here: it is the model's input size (see :func:`default_size`).
    """

    tfrecords: Path
    size: tuple[int, int]
    split: str = "train"
    out: Path = Path("grid.png")
    count: int = 8
    augment: bool = True
    seed: int = 0
    columns: int = 4

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PreviewConfig:
        tfrecords = Path(args.tfrecords)
        size = parse_size(args.size) if args.size else default_size(tfrecords)
        return cls(
            tfrecords, size, args.split, Path(args.out), args.count, args.augment, args.seed, args.columns,
        )  # fmt: skip

    @property
    def folder(self) -> Path:
        """``<tfrecords>/<split>``, or ``<tfrecords>`` itself when it is already a split folder."""
        nested = self.tfrecords / self.split
        return nested if nested.is_dir() else self.tfrecords


def default_size(tfrecords: Path) -> tuple[int, int]:
    """The size the photos were converted at (``carvana convert --size``), else training's default.

    Either way the grid shows what training would be fed; without ``--size`` at conversion the
    photos keep their own size and the pipeline resizes them to the model's input size.
    """
    for manifest in (tfrecords / "manifest.json", tfrecords.parent / "manifest.json"):
        if manifest.is_file():
            size = json.loads(manifest.read_text()).get("options", {}).get("size")
            if size:
                return int(size[0]), int(size[1])
            break
    from trainer.training.config import ModelConfig  # the model's input size is declared there

    return ModelConfig().image_size


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint the car red and draw the mask's outline: float image (H,W,3) in [0,1], mask (H,W) {0,1}."""
    car = mask > 0.5
    out = np.where(car[..., None], (1 - alpha) * image + alpha * TINT, image)
    inner = car.copy()
    inner[1:-1, 1:-1] &= car[:-2, 1:-1] & car[2:, 1:-1] & car[1:-1, :-2] & car[1:-1, 2:]
    return np.where((car & ~inner)[..., None], OUTLINE, out)


def grid(images: np.ndarray, masks: np.ndarray, columns: int) -> Image.Image:
    """Tiles of ``overlay`` in rows of ``columns`` on a white sheet."""
    count, height, width = images.shape[:3]
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    sheet = np.ones((rows * (height + GAP) + GAP, columns * (width + GAP) + GAP, 3), np.float32)
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        top, left = GAP + (index // columns) * (height + GAP), GAP + (index % columns) * (width + GAP)
        sheet[top : top + height, left : left + width] = overlay(image, mask[..., 0])
    return Image.fromarray((np.clip(sheet, 0, 1) * 255 + 0.5).astype(np.uint8))


def preview(config: PreviewConfig) -> Path:
    """Read one batch of ``config.count`` examples and save the grid; returns the PNG path."""
    from trainer.data.pipeline import PipelineConfig, make_dataset  # TensorFlow: import on use

    pipeline = PipelineConfig(
        image_size=config.size,
        batch_size=config.count,
        augment=config.augment,
        deterministic=True,
        seed=config.seed,
    )
    dataset = make_dataset(config.folder, pipeline, training=config.augment)
    images, masks = next(iter(dataset.take(1)))
    with atomic_path(config.out) as tmp:
        grid(images.numpy(), masks.numpy(), config.columns).save(tmp, format="PNG")
    return config.out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carvana preview", description="Save a PNG grid of one pipeline batch with the masks overlaid."
    )
    parser.add_argument(
        "--tfrecords", required=True, help="output folder of 'carvana convert' (or a split folder)"
    )
    parser.add_argument("--split", default="train", help="split folder to read (train, validation)")
    parser.add_argument("--out", default="grid.png", help="PNG to write")
    parser.add_argument("--count", type=int, default=8, help="photos in the grid (one batch)")
    parser.add_argument(
        "--size",
        help="model input size HEIGHTxWIDTH (default: the size given to carvana convert, "
        "else carvana train's --image-size default)",
    )
    parser.add_argument("--columns", type=int, default=4, help="tiles per row")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed")
    parser.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True,
        help="show the training augmentation (default) or the plain resized examples",
    )  # fmt: skip
    return parser


def _command(args: argparse.Namespace) -> int:
    try:
        config = PreviewConfig.from_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.count < 1:
        raise UsageError(f"--count must be at least 1, got {config.count}")
    out = preview(config)
    print(f"wrote {out} ({config.count} photos from {config.folder}, masks overlaid)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
