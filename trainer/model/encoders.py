"""U-Nets on pretrained Keras Applications backbones (MobileNetV2, EfficientNetB0/B3, ResNet50).

The layout follows qubvel/segmentation_models: a backbone's feature maps at strides 2, 4, 8 and 16
are the skip connections, the stride-32 map is the bottleneck, and five decoder blocks (upsample,
concatenate the skip, two 3x3 conv + BN + ReLU; the last block has no skip) bring it back to the
input size. Level ``i`` of the decoder (``dec1`` at full size ... ``dec5`` at 1/16) has
``base_filters * 2**(i-1)`` filters, 16..256 by default, as segmentation_models' decoder.

The model takes what the input pipeline and the exported graph feed every model: float images in
[0, 1]. Each backbone's own ImageNet preprocessing (``[-1, 1]`` for MobileNetV2, BGR minus the
ImageNet mean for ResNet50, ``[0, 255]`` for EfficientNet, which normalises inside itself) is the
model's first layer, so serving, ``carvana predict`` and evaluation need no change.

The backbone is one nested layer named ``encoder`` (:data:`ENCODER_LAYER`): freezing it for the
first epochs of fine-tuning is ``set_encoder_trainable(model, False)`` and a recompile; a frozen
backbone's batch-norm layers run in inference mode (Keras' rule for ``trainable=False``), so
the ImageNet statistics are not overwritten by the first batches of car photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from trainer.model.shape import check_input_size
from trainer.model.unet import check_decoder_options, conv_block, upsample

ENCODER_LAYER = "encoder"
# ImageNet's RGB mean on the 0..255 scale, which "caffe"-style backbones (ResNet50) subtract in BGR.
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESSING_MODES = ("tf", "caffe", "uint8_scale")


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone and which of its layers are the stride-2..32 feature maps."""

    application: str  # the keras.applications constructor
    features: tuple[str, str, str, str, str]
    preprocessing: str  # a PREPROCESSING_MODES entry: what the ImageNet weights were trained on


_EFFICIENTNET_FEATURES = (
    "block2a_expand_activation",
    "block3a_expand_activation",
    "block4a_expand_activation",
    "block6a_expand_activation",
    "top_activation",
)
BACKBONES: dict[str, Backbone] = {
    "mobilenetv2": Backbone(
        "MobileNetV2",
        (
            "block_1_expand_relu",
            "block_3_expand_relu",
            "block_6_expand_relu",
            "block_13_expand_relu",
            "out_relu",
        ),
        "tf",
    ),
    # EfficientNet's Keras model starts with its own Rescaling(1/255) and ImageNet Normalization.
    "efficientnetb0": Backbone("EfficientNetB0", _EFFICIENTNET_FEATURES, "uint8_scale"),
    "efficientnetb3": Backbone("EfficientNetB3", _EFFICIENTNET_FEATURES, "uint8_scale"),
    "resnet50": Backbone(
        "ResNet50",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        "caffe",
    ),
}


@keras.saving.register_keras_serializable(package="carvana")
class BackbonePreprocessing(layers.Layer):
    """Float images in [0, 1] -> the input range a backbone's ImageNet weights expect.

    ``tf``: ``[-1, 1]``; ``caffe``: 0..255 BGR minus the ImageNet mean; ``uint8_scale``: 0..255.
    No weights: the same for every weights choice, so a model and its export are one graph.
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"mode must be one of {', '.join(PREPROCESSING_MODES)}, got {mode!r}")
        self.mode = mode

    def call(self, images):
        if self.mode == "tf":
            return images * 2.0 - 1.0
        scaled = images * 255.0
        if self.mode == "uint8_scale":
            return scaled
        mean = keras.ops.convert_to_tensor(IMAGENET_MEAN_BGR, dtype=self.compute_dtype)
        return keras.ops.flip(scaled, axis=-1) - mean

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def keras_weights(weights: str | Path | None) -> str | None:
    """``imagenet`` | ``none`` | None | a file path -> the ``weights=`` argument of keras.applications."""
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights) == "imagenet":
        return "imagenet"
    if not Path(weights).is_file():
        raise ValueError(f"encoder weights must be imagenet, none or a weights file, got {str(weights)!r}")
    return str(weights)


def build_encoder(
    name: str,
    *,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    weights: str | Path | None = "imagenet",
    alpha: float = 1.0,
) -> keras.Model:
    """The backbone ``name`` (one of PRETRAINED_ENCODERS) as a model of its five feature maps.

    Outputs are at strides 2, 4, 8, 16, 32 of the input. It expects the backbone's preprocessed
    input (see :class:`BackbonePreprocessing`). ``weights``: ``imagenet`` (downloaded by Keras on
    first use and cached in ~/.keras/models), ``none``/None (random) or the path of a weights file
    of the same backbone (``model.save_weights``' ``.weights.h5``, or Keras' own ``.h5`` ImageNet
    file for a machine without internet). ``alpha`` is MobileNetV2's width multiplier.
    """
    if name not in BACKBONES:
        raise ValueError(f"encoder must be one of {', '.join(BACKBONES)}, got {name!r}")
    if alpha != 1.0 and name != "mobilenetv2":
        raise ValueError(f"alpha (width multiplier) applies to mobilenetv2 only, got {alpha} for {name}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    spec = BACKBONES[name]
    extra = {"alpha": alpha} if name == "mobilenetv2" else {}
    backbone = getattr(keras.applications, spec.application)(
        include_top=False, weights=keras_weights(weights), input_shape=input_shape, **extra
    )
    features = [backbone.get_layer(layer).output for layer in spec.features]
    return keras.Model(backbone.inputs, features, name=ENCODER_LAYER)


def build_encoder_unet(
    *,
    encoder: str,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    encoder_weights: str | Path | None = "imagenet",
    alpha: float = 1.0,
    base_filters: int = 16,
    batch_norm: bool = True,
    dropout: float = 0.0,
    upsampling: str = "transpose",
    name: str | None = None,
) -> keras.Model:
    """A U-Net with the pretrained backbone ``encoder``; outputs logits [B, H, W, 1] like build_unet.

    Height and width, when given, must be divisible by 32. ``dropout`` applies to the bottleneck
    (the stride-32 map), ``upsampling`` and ``batch_norm`` to the decoder, as in build_unet. The
    ``logits`` layer is float32 so the output is float32 under a mixed-precision policy too.
    """
    check_decoder_options(base_filters=base_filters, dropout=dropout, upsampling=upsampling)
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")
    height, width, _ = input_shape
    if height is not None and width is not None:
        check_input_size(height, width, 0, encoder=encoder)
    backbone = build_encoder(encoder, input_shape=input_shape, weights=encoder_weights, alpha=alpha)

    inputs = keras.Input(shape=input_shape, name="image")
    x = BackbonePreprocessing(BACKBONES[encoder].preprocessing, name="preprocessing")(inputs)
    *skips, x = backbone(x)
    if dropout > 0:
        x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)
    for level in range(len(skips) + 1, 0, -1):  # dec5 (1/16 of the input) ... dec1 (full size)
        filters = base_filters * 2 ** (level - 1)
        x = upsample(x, filters, upsampling, f"dec{level}_up")
        if level > 1:
            x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level - 2]])
        x = conv_block(x, filters, f"dec{level}", batch_norm=batch_norm)

    logits = layers.Conv2D(1, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name or f"unet_{encoder}")


def set_encoder_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze or unfreeze the backbone of a build_encoder_unet model (recompile afterwards).

    Frozen, its weights get no gradients and its batch norms use their moving statistics.
    """
    model.get_layer(ENCODER_LAYER).trainable = trainable
