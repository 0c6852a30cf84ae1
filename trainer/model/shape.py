"""What input sizes and decoder modes the U-Net accepts, in plain Python.

Kept apart from ``unet.py`` (which imports Keras) so the training configuration and the launcher can
check a size before a job starts without loading TensorFlow.
"""

from __future__ import annotations

UPSAMPLING_MODES = ("transpose", "bilinear")


def check_input_size(height: int, width: int, depth: int) -> None:
    """Raise ValueError unless ``height`` and ``width`` survive ``depth`` 2x poolings exactly.

    Each encoder level halves the feature map and the matching decoder level doubles it back; with
    a size that does not divide evenly the skip connection and the upsampled map differ by a pixel
    and Keras fails deep inside ``Concatenate`` with a message that names neither.
    """
    factor = 2**depth
    bad = [f"{name} {size}" for name, size in (("height", height), ("width", width)) if size % factor]
    if bad:
        raise ValueError(
            f"input size {height}x{width} does not work with depth {depth}: {' and '.join(bad)} "
            f"not divisible by 2**depth = {factor} (e.g. use {_round_up(height, factor)}x"
            f"{_round_up(width, factor)})"
        )


def _round_up(value: int, factor: int) -> int:
    return -(-value // factor) * factor
