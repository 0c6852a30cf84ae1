"""Mask quality per edge-refinement setting (trainer.refine), on trained runs of bench/recipes.py.

Refinement is part of the exported graph, so comparing settings needs no training: each run's best
weights (``ckpt/best.weights.h5``) are exported again with each ``--setting`` into
``RUN/refine-R-EPS/model`` and scored by ``carvana evaluate`` on the validation cars at full
resolution, with and without flip TTA, exactly as bench/recipes.py scores the run's own export.
Finished settings (a ``DONE`` file) are not redone. ``--setting 0`` is the mask without refinement.

Usage::

    python bench/refine.py --records runs/real-192x288 --data ../shared/carvana \\
        --run runs/recipes/resize50-seed0 --run runs/recipes/resize50-seed1 --setting 0 --setting 2,1e-4

The runs must have been trained with the default architecture, or give its flags with
``--train-flags`` ("--base-filters 32 ..."); the pipeline and schedule flags do not matter here.
Prints one Markdown row per run and setting: mean / median / 5th percentile / share >= 0.985 /
>= 0.99 / >= 0.995, without and with TTA; and what each setting costs: the median time of the
endpoint's ``mask_png`` signature on one real 1918x1280 photo, in-process, the settings' exports
of the first run timed one after the other (compare them within one run; train nothing meanwhile).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from recipes import add_data_arguments, evaluate, scores  # bench/recipes.py: the same evaluation and columns

from trainer.model.shape import EdgeRefinement
from trainer.model_metadata import read_metadata


def parse_setting(text: str) -> EdgeRefinement:
    """``"2,1e-4"`` -> radius 2, eps 1e-4; ``"0"`` -> off."""
    radius, _, eps = text.partition(",")
    try:
        return EdgeRefinement(radius=int(radius), eps=float(eps or EdgeRefinement.eps))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RADIUS[,EPS] such as 2,1e-4 or 0, got {text!r}") from None


def folder_name(setting: EdgeRefinement) -> str:
    return f"refine-{setting.radius}-{setting.eps:g}" if setting.enabled else "refine-off"


def export_run(run: Path, setting: EdgeRefinement, model_dir: Path, train_flags: list[str]) -> None:
    """The run's best weights, exported with ``setting`` into ``model_dir`` (its metadata kept)."""
    from trainer.train import build_model, export
    from trainer.training.config import format_size, parse_config

    metadata = read_metadata(run / "model") or {}
    size = format_size(tuple(metadata.get("image_size", (192, 288))))
    refine = ["--refine-radius", str(setting.radius), "--refine-eps", f"{setting.eps:g}"]
    config = parse_config(["--model-dir", str(model_dir), "--image-size", size, *refine, *train_flags])
    model = build_model(config)
    model.load_weights(run / "ckpt" / "best.weights.h5")
    export(model, config, {**metadata, "edge_refinement": asdict(setting)})


def mask_png_ms(model: Path, photo: bytes, calls: int) -> float:
    """Median milliseconds of one in-process ``mask_png`` call on ``photo`` (after one warm-up)."""
    import tensorflow as tf

    from trainer.saved_model_io import find_saved_model
    from trainer.wire import SIGNATURE

    signature = tf.saved_model.load(str(find_saved_model(model))).signatures[SIGNATURE]
    inputs = {"image_bytes": tf.constant([photo]), "orientation": tf.constant([1])}
    signature(**inputs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        signature(**inputs)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


# The picture's window (height, width) in photo pixels: small enough to see single pixels.
WINDOW = (240, 360)


def per_image(folder: Path) -> dict[tuple[str, int], float]:
    """(car, angle) -> Dice from one evaluation's per_image.csv."""
    with (folder / "per_image.csv").open() as handle:
        return {(row["id"], int(row["angle"])): float(row["dice"]) for row in csv.DictReader(handle)}


def picture(run: Path, before: EdgeRefinement, after: EdgeRefinement, data: Path, path: Path) -> None:
    """The photo whose Dice ``after`` gains most over ``before``, its errors under each side by side,
    in the window where the two masks differ most (red: marked but not car; blue: car missed)."""
    import tensorflow as tf
    from matplotlib.figure import Figure

    from trainer.data.layout import read_mask, read_photo, scan_dataset
    from trainer.evaluate import error_overlay
    from trainer.saved_model_io import find_saved_model
    from trainer.training.plots import save_figure
    from trainer.wire import SIGNATURE, decode_mask_png

    folders = [run / folder_name(setting) for setting in (before, after)]
    scores_before, scores_after = (per_image(folder / "eval") for folder in folders)
    car, angle = max(scores_after, key=lambda key: scores_after[key] - scores_before[key])
    photo = next(p for p in scan_dataset(data).photos if (p.car_id, p.angle) == (car, angle))
    pixels, jpeg = read_photo(photo.image_path), photo.image_path.read_bytes()
    truth = read_mask(photo, pixels.shape[:2])
    masks = []
    for folder in folders:
        signature = tf.saved_model.load(str(find_saved_model(folder / "model"))).signatures[SIGNATURE]
        out = signature(image_bytes=tf.constant([jpeg]), orientation=tf.constant([1]))
        masks.append(decode_mask_png(out["mask_png_bytes"].numpy()[0]))
    # The 240x360 window (on a 20-pixel grid) holding the most pixels the two masks disagree on.
    differ = np.pad(np.cumsum(np.cumsum(masks[0] != masks[1], 0), 1), ((1, 0), (1, 0)))
    height, width = WINDOW
    corners = [
        (top, left)
        for top in range(0, pixels.shape[0] - height + 1, 20)
        for left in range(0, pixels.shape[1] - width + 1, 20)
    ]
    top, left = max(
        corners,
        key=lambda c: (
            differ[c[0] + height, c[1] + width]
            - differ[c[0], c[1] + width]
            - differ[c[0] + height, c[1]]
            + differ[c[0], c[1]]
        ),
    )
    window = np.s_[top : top + height, left : left + width]
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    for index, (setting, mask, score) in enumerate(
        zip((before, after), masks, (scores_before, scores_after), strict=True)
    ):
        ax = fig.add_subplot(1, 2, index + 1)
        ax.imshow(error_overlay(pixels, truth, mask)[window].astype(np.uint8))
        label = f"refinement r={setting.radius}, eps={setting.eps:g}" if setting.enabled else "no refinement"
        ax.set_title(f"{label}: Dice {score[car, angle]:.4f}")
        ax.set_axis_off()
    fig.suptitle(
        f"{photo.image_path.name}: the {width}x{height} window at ({left}, {top}) of "
        f"{pixels.shape[1]}x{pixels.shape[0]} where the masks differ most (red: not car, blue: missed)"
    )
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/refine.py", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    add = parser.add_argument
    add("--run", type=Path, action="append", required=True, help="a bench/recipes.py run folder")
    add("--setting", type=parse_setting, action="append", required=True, help="RADIUS[,EPS]; 0 = off")
    add("--train-flags", default="", help="the runs' architecture flags, if not the defaults")
    add("--picture", type=Path, help="PNG: the first run's biggest gain, first setting against second")
    add("--calls", type=int, default=20, help="timed mask_png calls per setting, on the first run (0 = none)")
    args = parser.parse_args(argv)
    for run in args.run:
        if not (run / "ckpt" / "best.weights.h5").is_file():
            parser.error(f"--run {run}: no ckpt/best.weights.h5 (not a finished bench/recipes.py run)")
    rows = []
    for run in args.run:
        for setting in args.setting:
            folder = run / folder_name(setting)
            if not (folder / "DONE").is_file():
                print(f"{run.name}: exporting {folder.name}", flush=True)
                export_run(run, setting, folder / "model", shlex.split(args.train_flags))
                evaluate(folder, args)
            rows.append(
                f"| {run.name} | {folder.name} | {scores(folder / 'eval' / 'summary.json')} | "
                f"{scores(folder / 'eval-tta' / 'summary.json')} |"
            )
    if args.calls:
        photo = sorted((args.data / "train").glob("*.jpg"))[0]
        print(f"mask_png on {photo.name}, {args.calls} calls in-process, median (the first run's exports):")
        for setting in args.setting:
            folder = args.run[0] / folder_name(setting) / "model"
            print(f"  {folder.parent.name}: {mask_png_ms(folder, photo.read_bytes(), args.calls):.1f} ms")
    if args.picture and len(args.setting) >= 2:
        picture(args.run[0], args.setting[0], args.setting[1], args.data, args.picture)
        print(f"wrote {args.picture}")
    columns = "mean / median / p5 / >= 0.985 / >= 0.99 / >= 0.995"
    print(f"| run | edge refinement | Dice: {columns} | with flip TTA |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
