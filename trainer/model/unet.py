"""The U-Net: a functional Keras model from a handful of keyword arguments.

Layer names are deterministic (``enc1_conv1`` ... ``bottleneck_conv2`` ... ``dec1_conv2``, ``logits``)
so checkpoints, TensorBoard graphs and tests can refer to a layer by name whatever the depth. The
model outputs one channel of *logits* rather than probabilities: the loss and metrics apply the
sigmoid themselves (numerically stable BCE), and the exported graph resizes logits back to the
photo's size before the sigmoid, which keeps edges sharper than resizing probabilities.
"""

from __future__ import annotations

import keras
from keras import layers

from trainer.model.shape import UPSAMPLING_MODES, check_input_size

# Keras' default (0.99) averages the batch statistics over ~100s of steps: on a short run (the demo,
# a tuning trial: 10-20 steps an epoch) the inference-time statistics lag the weights and validation
# Dice swings from epoch to epoch. 0.9 (PyTorch's default) tracks them within ~10 steps.
BN_MOMENTUM = 0.9


def conv_block(x, filters: int, prefix: str, *, batch_norm: bool):
    """Two 3x3 convolutions, each followed by batch norm (optional) and ReLU.

    Also the decoder block of the pretrained-encoder U-Nets (``trainer.model.encoders``).
    """
    for i in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"{prefix}_conv{i}",
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
    return x


def upsample(x, filters: int, mode: str, name: str):
    """Double the feature map: a learned 2x2 transposed convolution, or bilinear resizing."""
    if mode == "transpose":
        return layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=name)(x)
    return layers.UpSampling2D(2, interpolation="bilinear", name=name)(x)


def check_decoder_options(*, base_filters: int, dropout: float, upsampling: str) -> None:
    """ValueError naming the argument, for the options every U-Net decoder shares."""
    if base_filters < 1:
        raise ValueError(f"base_filters must be >= 1, got {base_filters}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if upsampling not in UPSAMPLING_MODES:
        raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLING_MODES)}, got {upsampling!r}")


def build_unet(
    *,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    depth: int = 4,
    base_filters: int = 16,
    batch_norm: bool = True,
    dropout: float = 0.0,
    upsampling: str = "transpose",
    name: str = "unet",
) -> keras.Model:
    """A U-Net with ``depth`` poolings; level ``i`` (1-based) has ``base_filters * 2**(i-1)`` filters.

    ``input_shape`` may leave height and width as None (any size divisible by ``2**depth`` then
    works at call time); given sizes are checked here. ``dropout`` applies to the bottleneck, where
    the features are widest and most prone to memorising the few cars of a small training set.
    ``upsampling="bilinear"`` (resize then convolve) avoids the checkerboard artefacts transposed
    convolutions can leave and has fewer weights. The ``logits`` layer is float32 so the output is
    float32 even under a mixed-precision policy.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    check_decoder_options(base_filters=base_filters, dropout=dropout, upsampling=upsampling)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    height, width, _ = input_shape
    if height is not None and width is not None:
        check_input_size(height, width, depth)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level in range(1, depth + 1):
        x = conv_block(x, base_filters * 2 ** (level - 1), f"enc{level}", batch_norm=batch_norm)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)

    x = conv_block(x, base_filters * 2**depth, "bottleneck", batch_norm=batch_norm)
    if dropout > 0:
        x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)

    for level in range(depth, 0, -1):
        filters = base_filters * 2 ** (level - 1)
        x = upsample(x, filters, upsampling, f"dec{level}_up")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level - 1]])
        x = conv_block(x, filters, f"dec{level}", batch_norm=batch_norm)

    logits = layers.Conv2D(1, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
