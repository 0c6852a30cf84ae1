"""Mask quality per training recipe, on the README's protocol: train within a wall-clock budget on the
training cars, then score every photo of the validation cars at full resolution, with and without
flip TTA (issue 11's table).

Each run is ``carvana train`` then ``carvana evaluate`` twice, as the README's commands; a run lives
in ``--out/NAME-seedS/`` (``model/``, ``output/history.csv``, ``train.log``, ``eval/`` and
``eval-tta/`` with their ``summary.json``). A run whose ``DONE`` file exists is not trained again, so
an interrupted benchmark goes on where it stopped, and ``--report`` only tabulates what is there.
Train on an idle machine: the budget is wall-clock, so anything else running costs epochs.

Usage::

    carvana convert --data ../shared/carvana --out runs/real-192x288 --size 192x288 \\
        --val-fraction 0.1667 --seed 0
    python bench/recipes.py --records runs/real-192x288 --data ../shared/carvana --out runs/recipes \\
        --recipe default= --recipe "crop50=--progressive-share 0.5 --progressive-mode crop" --seeds 0,1

It prints one Markdown row per run: recipe, seed, minutes, epochs, then mean / median / 5th
percentile / share >= 0.985 / >= 0.99 / >= 0.995, without and with TTA; ``--plot PNG`` draws each
run's validation Dice (at the model size, per epoch) against its training minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

DONE_LINE = re.compile(r"^done \((\w+)\) after (\d+) epochs in ([0-9.]+) min")
EPOCH_VAL_DICE = re.compile(r"^epoch=\d+ .*val_dice=([0-9.]+)$")
EPOCH_MINUTES = re.compile(r"^  ([0-9.]+) min in all")


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """``"NAME=flags"`` -> (NAME, [flags]); the flags are ``carvana train``'s."""
    name, sep, flags = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise argparse.ArgumentTypeError(
            f"expected NAME=FLAGS with NAME of letters, digits, _.-, got {text!r}"
        )
    return name, shlex.split(flags)


def carvana(*args: str, log: Path) -> None:
    """Run one ``carvana`` command (this interpreter's trainer.cli), its output into ``log``."""
    with log.open("w") as handle:
        code = subprocess.call(
            [sys.executable, "-m", "trainer.cli", *args], stdout=handle, stderr=subprocess.STDOUT
        )
    if code != 0:
        raise SystemExit(f"bench/recipes.py: carvana {args[0]} failed (exit {code}); see {log}")


def run(folder: Path, flags: list[str], seed: int, args: argparse.Namespace) -> None:
    """Train and evaluate one recipe and seed into ``folder`` unless it is DONE already."""
    if (folder / "DONE").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{folder.name}: training {args.minutes:g} min ({shlex.join(flags) or 'defaults'})", flush=True)
    carvana(
        "train", "--data", str(args.records), "--model-dir", str(folder / "model"),
        "--output-data-dir", str(folder / "output"), "--checkpoint-dir", str(folder / "ckpt"),
        "--tensorboard-dir", str(folder / "tb"), "--max-minutes", f"{args.minutes:g}", "--seed", str(seed),
        "--verbose", "2", "--profile-batches", "0", *flags,
        log=folder / "train.log",
    )  # fmt: skip
    evaluate(folder, args)


def evaluate(folder: Path, args: argparse.Namespace) -> None:
    """``carvana evaluate`` of ``folder/model`` on the validation cars of ``args.records``, without
    and with flip TTA (``folder/eval``, ``folder/eval-tta``), then ``folder/DONE``."""
    for name, tta in (("eval", []), ("eval-tta", ["--tta"])):
        print(f"{folder}: evaluating{' with flip TTA' if tta else ''}", flush=True)
        carvana(
            "evaluate", "--model", str(folder / "model"), "--data", str(args.data),
            "--manifest", str(args.records), "--split", "validation", "--out", str(folder / name), *tta,
            log=folder / f"{name}.log",
        )  # fmt: skip
    (folder / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--records`` and ``--data``: what every quality bench evaluates on."""
    add = parser.add_argument
    add("--records", type=Path, required=True, help="carvana convert's output (its manifest's split)")
    add("--data", type=Path, required=True, help="the Kaggle-layout photos, for full-resolution Dice")


def scores(summary_path: Path) -> str:
    """``mean / median / p5 / >=0.985 / >=0.99 / >=0.995`` of one evaluation's summary.json."""
    summary = json.loads(summary_path.read_text())
    shares = summary["share_at_least"]
    return f"{summary['mean']:.5f} / {summary['median']:.5f} / {summary['p5']:.4f} / " + " / ".join(
        f"{100 * shares[key]:.1f} %" for key in ("0.985", "0.99", "0.995")
    )


def row(folder: Path) -> str:
    """The run's Markdown table row (its training minutes and epochs from the log's last line)."""
    done = [m for m in map(DONE_LINE.match, (folder / "train.log").read_text().splitlines()) if m]
    reason, epochs, minutes = done[-1].groups()
    name, _, seed = folder.name.rpartition("-seed")
    return (
        f"| {name} | {seed} | {minutes} min ({epochs} epochs, {reason.replace('_', ' ')}) | "
        f"{scores(folder / 'eval' / 'summary.json')} | {scores(folder / 'eval-tta' / 'summary.json')} |"
    )


def curve(folder: Path) -> tuple[list[float], list[float]]:
    """(minutes, val_dice) at each epoch end, from the run's epoch lines."""
    minutes, dice = [], []
    for line in (folder / "train.log").read_text().splitlines():
        if match := EPOCH_VAL_DICE.match(line):
            dice.append(float(match[1]))
        elif match := EPOCH_MINUTES.match(line):
            minutes.append(float(match[1]))
    return minutes, dice


def plot(folders: list[Path], path: Path) -> None:
    """Validation Dice against training minutes, one line per run; the y axis spans 0.95 to 0.99,
    where the runs end (the small-photo epochs of progressive resizing dip below it)."""
    from trainer.training.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for folder in folders:
        minutes, dice = curve(folder)
        ax.plot(minutes, dice, "-o", markersize=3, label=folder.name)
    ax.set_ylim(0.95, 0.99)
    ax.set_xlabel("training minutes (wall clock)")
    ax.set_ylabel("val_dice (at the model size, per epoch)")
    ax.set_title("validation Dice while training, per recipe and seed")
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/recipes.py", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    add = parser.add_argument
    add("--out", type=Path, default=Path("runs/recipes"), help="one folder per run")
    add("--recipe", type=parse_recipe, action="append", default=[], help="NAME=FLAGS, repeatable")
    add("--seeds", default="0", help="comma-separated seeds, each recipe once per seed")
    add("--minutes", type=float, default=28.0, help="training budget (--max-minutes)")
    add("--report", action="store_true", help="only tabulate the finished runs under --out")
    add("--plot", type=Path, help="also draw validation Dice against minutes per run into this PNG")
    add("--only", action="append", default=[], help="tabulate and plot only this recipe's runs, repeatable")
    args = parser.parse_args(argv)
    if not args.report:
        if not args.recipe:
            parser.error("--recipe: expected at least one NAME=FLAGS (or --report)")
        seeds = [int(s) for s in args.seeds.split(",")]
        for name, flags in args.recipe:
            for seed in seeds:
                run(args.out / f"{name}-seed{seed}", flags, seed, args)
    columns = "mean / median / p5 / >= 0.985 / >= 0.99 / >= 0.995"
    print(f"| recipe | seed | training | Dice: {columns} | with flip TTA |")
    print("|---|---|---|---|---|")
    finished = [folder for folder in sorted(args.out.glob("*-seed*")) if (folder / "DONE").is_file()]
    if args.only:
        finished = [folder for folder in finished if folder.name.rpartition("-seed")[0] in args.only]
    for folder in finished:
        print(row(folder))
    if args.plot:
        plot(finished, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
