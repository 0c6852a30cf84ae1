"""The ``carvana`` command: one subcommand per step of the pipeline.

This is the composition root of the project, the one place that knows every step (the local AWS
stand-ins of ``local_aws/`` included, which shipped code never imports), so it maps subcommand names
to modules and imports only the module asked for (importing TensorFlow for
``carvana --help`` would cost seconds). Each module exposes ``main(argv) -> int`` and can also be
run with ``python -m``.
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> (module, leading arguments for its main, one-line summary), in pipeline order. The launch
# module serves four commands and reads which one from its first argument.
COMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "make-sample": ("trainer.data.sample", (), "write a synthetic dataset in the Kaggle Carvana layout"),
    "convert": (
        "trainer.data.convert",
        (),
        "convert a Carvana folder into sharded TFRecords (local or s3://)",
    ),
    "preview": ("trainer.data.preview", (), "save a PNG grid of one pipeline batch with masks overlaid"),
    "train": ("trainer.train", (), "train the U-Net locally (the SageMaker entry point, local defaults)"),
    "evaluate": ("trainer.evaluate", (), "mean Dice per image at full resolution, worst cases as PNGs"),
    "predict": ("trainer.predict", (), "masks, cut-outs and a Kaggle submission CSV for photos"),
    "fit": ("trainer.launch.cli", ("fit",), "launch a training job (--backend local|sagemaker)"),
    "tune": ("trainer.launch.cli", ("tune",), "launch a tuning job (--backend local|sagemaker)"),
    "deploy": ("trainer.launch.cli", ("deploy",), "deploy a trained model (--backend local|sagemaker)"),
    "transform": (
        "trainer.launch.cli",
        ("transform",),
        "Batch Transform: every photo under a prefix or folder -> <photo>.out (--backend local|sagemaker)",
    ),
    "package": ("serving.package", (), "build model.tar.gz in the TF Serving container layout"),
    "serve": ("local_aws.endpoint.server", (), "run the local endpoint (SageMaker container, TF Serving)"),
    "gateway": ("local_aws.api_gateway", (), "run the local API gateway in front of the Lambda handler"),
}


def usage() -> str:
    """The top-level help text listing every subcommand."""
    width = max(map(len, COMMANDS))
    lines = ["usage: carvana <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", "Run 'carvana <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``carvana <command> ...`` to the command's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"carvana: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) buries the progress people follow;
    # TF_CPP_MIN_LOG_LEVEL=0 brings it back.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module_name, lead, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    return int(module.main([*lead, *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main())
