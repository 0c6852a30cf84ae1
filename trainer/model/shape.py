"""What input sizes, encoders and decoder modes the models accept, and the size the exported
model's edge refinement works at (``trainer.refine``), in plain Python.

Kept apart from ``unet.py`` and ``encoders.py`` (which import Keras) so the training configuration
and the launcher can check a size before a job starts without loading TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

UPSAMPLING_MODES = ("transpose", "bilinear")
# ``unet``: the from-scratch encoder of ``build_unet`` (``--depth`` poolings); the others are Keras
# Applications backbones (``trainer.model.encoders``) with a U-Net decoder on five feature maps.
SCRATCH_ENCODER = "unet"
PRETRAINED_ENCODERS = ("mobilenetv2", "efficientnetb0", "efficientnetb3", "resnet50")
ENCODERS = (SCRATCH_ENCODER, *PRETRAINED_ENCODERS)
# A backbone's deepest feature map is 1/32 of the input (five 2x reductions).
BACKBONE_DEPTH = 5
ENCODER_WEIGHTS = ("imagenet", "none")  # or the path of a weights file


def size_divisor(depth: int, encoder: str = SCRATCH_ENCODER) -> int:
    """What height and width must be multiples of: 2 to the number of 2x reductions."""
    return 2 ** (BACKBONE_DEPTH if encoder != SCRATCH_ENCODER else depth)


def scaled_size(
    size: tuple[int, int], scale: float, depth: int, *, encoder: str = SCRATCH_ENCODER
) -> tuple[int, int]:
    """``size`` times ``scale``, each side rounded down to a size the model takes (``(192, 288)`` x
    2/3 at depth 4 -> ``(128, 192)``); ValueError when a side would round down to nothing."""
    factor = size_divisor(depth, encoder)
    scaled = tuple(int(side * scale) // factor * factor for side in size)
    if min(scaled) < factor:
        raise ValueError(
            f"{scale:g} x {size[0]}x{size[1]} is smaller than {factor}x{factor}, the least the model takes"
        )
    return scaled[0], scaled[1]


def check_input_size(height: int, width: int, depth: int, *, encoder: str = SCRATCH_ENCODER) -> None:
    """Raise ValueError unless ``height`` and ``width`` survive the encoder's 2x reductions exactly.

    Each encoder level halves the feature map and the matching decoder level doubles it back; with
    a size that does not divide evenly the skip connection and the upsampled map differ by a pixel
    and Keras fails deep inside ``Concatenate`` with a message that names neither. ``depth`` counts
    the from-scratch U-Net's poolings; a pretrained backbone always reduces five times (``/32``).
    """
    factor = size_divisor(depth, encoder)
    if encoder != SCRATCH_ENCODER:
        depth, what = BACKBONE_DEPTH, f"encoder {encoder}"
    else:
        what = f"depth {depth}"
    bad = [f"{name} {size}" for name, size in (("height", height), ("width", width)) if size % factor]
    if bad:
        raise ValueError(
            f"input size {height}x{width} does not work with {what}: {' and '.join(bad)} "
            f"not divisible by 2**{depth} = {factor} (e.g. use {_round_up(height, factor)}x"
            f"{_round_up(width, factor)})"
        )


def _round_up(value: int, factor: int) -> int:
    return -(-value // factor) * factor


# The edge refinement draws the edge on the photo resized to this multiple of the model's input
# size, each side (its coefficients are fitted at the model's size: trainer.refine).
GUIDE_SCALE = 2


@dataclass(frozen=True)
class EdgeRefinement:
    """The exported model's guided filter (``trainer.refine``): ``radius`` in pixels of the model's
    input, ``eps`` in squared [0, 1] colour units; ``radius`` 0 turns refinement off.

    The defaults were measured on real cars (README, Results: edge refinement).
    """

    radius: int = 2
    eps: float = 1e-4

    @property
    def enabled(self) -> bool:
        return self.radius > 0

    def guide_size(self, model_size: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) the refined edge is drawn at, on the photo resized to it."""
        return GUIDE_SCALE * model_size[0], GUIDE_SCALE * model_size[1]


# What a SavedModel is exported with unless told otherwise (carvana train's --refine-* defaults).
DEFAULT_REFINEMENT = EdgeRefinement()
