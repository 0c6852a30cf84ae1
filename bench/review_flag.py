"""Calibrate and check the "needs review" flag on the validation cars.

For every photo of the split (cars the model never trained on) it runs the endpoint's ``alpha_png``
signature (as ``carvana predict`` and the endpoint do), scores the mask's Dice at full resolution
against the truth (as ``carvana evaluate``), and computes the review signals of trainer/studio.py.
It prints, for the flag as shipped (trainer.wire.REVIEW_THRESHOLD) and for the threshold this split
would choose (the largest one that still catches the target share of bad photos):

- the share of photos auto-approved, and the worst Dice among them;
- how many of the photos below ``--bad-dice`` (0.985) the flag catches.

It also writes ``--out`` (a CSV: photo, Dice, each signal, risk) so the weighting can be studied
without running the model again.

Usage: ``python bench/review_flag.py --model runs/m192/model --data ../shared/carvana
--manifest runs/real-192x288 [--split validation] [--tta] [--out review_flag.csv]``
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trainer import studio
from trainer.evaluate import EvaluateConfig, display_truth, select_photos
from trainer.model.metrics import dice_numpy
from trainer.saved_model_io import open_model, to_mask
from trainer.studio_review import outline
from trainer.wire import REVIEW_THRESHOLD, exif_orientation


def flag_figures(dice: np.ndarray, risk: np.ndarray, threshold: float, bad_dice: float) -> dict[str, float]:
    """Approved share, worst approved Dice, and bad photos caught, for one threshold."""
    approved = risk <= threshold
    bad = dice < bad_dice
    return {
        "threshold": threshold,
        "approved": float(approved.mean()),
        "worst_approved_dice": float(dice[approved].min()) if approved.any() else float("nan"),
        "bad": int(bad.sum()),
        "caught": int((bad & ~approved).sum()),
    }


def calibrate(dice: np.ndarray, risk: np.ndarray, bad_dice: float, catch: float) -> float:
    """The largest threshold that flags at least ``catch`` of the photos below ``bad_dice``."""
    bad_risks = np.sort(risk[dice < bad_dice])
    if bad_risks.size == 0:
        return float(risk.max())
    # Flag the riskiest ceil(catch * n) bad photos: the threshold sits just below the last of them.
    must_catch = int(np.ceil(catch * bad_risks.size))
    lowest_caught = bad_risks[bad_risks.size - must_catch]
    below = risk[risk < lowest_caught]
    return float((below.max() + lowest_caught) / 2) if below.size else float(lowest_caught) / 2


def report(name: str, figures: dict[str, float]) -> str:
    return (
        f"{name}: threshold {figures['threshold']:.4f}: approved {figures['approved']:.1%} of photos, worst "
        f"approved Dice {figures['worst_approved_dice']:.4f}, caught {figures['caught']}/{figures['bad']} "
        "photos below the bad-Dice line"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--bad-dice", type=float, default=0.985)
    parser.add_argument("--catch", type=float, default=0.9, help="share of bad photos the flag must catch")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default="review_flag.csv")
    args = parser.parse_args(argv)

    config = EvaluateConfig(
        model=Path(args.model),
        data=Path(args.data),
        out=Path("."),
        manifest=Path(args.manifest),
        split=args.split,
    )
    photos = select_photos(config)
    rows = []
    with open_model(args.model) as model, tqdm(total=len(photos), desc="review", unit="img") as bar:
        for start in range(0, len(photos), args.batch_size):
            chunk = photos[start : start + args.batch_size]
            data = [p.image_path.read_bytes() for p in chunk]
            for photo, photo_bytes, answer in zip(chunk, data, model.alphas(data, tta=args.tta), strict=True):
                probabilities = studio.decode_alpha_png(answer["alpha_png_bytes"])
                mask = to_mask(probabilities)
                truth = display_truth(photo, exif_orientation(photo_bytes), mask.shape)
                verdict = studio.review(
                    probabilities, flip_disagreement=answer["flip_disagreement"], threshold=REVIEW_THRESHOLD
                )
                rows.append(
                    {
                        "photo": photo.image_path.name,
                        "dice": float(dice_numpy(mask, truth)),
                        "flip_disagreement": verdict.flip_disagreement,
                        "fragments": verdict.fragments,
                        "uncertain": verdict.uncertain,
                        "risk": verdict.risk,
                        # For studying other weightings: the car's area and outline length in pixels.
                        "car_pixels": int(mask.sum()),
                        "edge_pixels": int(outline(mask).sum()),
                    }
                )
            bar.update(len(chunk))
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    dice = np.array([r["dice"] for r in rows])
    risk = np.array([r["risk"] for r in rows])
    print(
        f"{len(rows)} photos of the {args.split} split, mean Dice {dice.mean():.5f}, "
        f"{int((dice < args.bad_dice).sum())} below {args.bad_dice}"
    )
    for signal in ("flip_disagreement", "fragments", "uncertain", "risk"):
        values = np.array([r[signal] for r in rows])
        correlation = np.corrcoef(values, 1 - dice)[0, 1] if values.std() > 0 else float("nan")
        print(f"  {signal}: median {np.median(values):.5f}, correlation with 1 - Dice {correlation:.3f}")
    print(report("shipped", flag_figures(dice, risk, REVIEW_THRESHOLD, args.bad_dice)))
    chosen = calibrate(dice, risk, args.bad_dice, args.catch)
    print(
        report(
            f"calibrated on this split (catch >= {args.catch:.0%})",
            flag_figures(dice, risk, chosen, args.bad_dice),
        )
    )
    print(f"per-photo signals -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
