"""The U-Net builder: output shapes for several sizes and depths, layer names, argument checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from trainer.model.shape import scaled_size
from trainer.model.unet import build_unet, check_input_size


@pytest.mark.parametrize(
    ("size", "depth", "upsampling"),
    [
        ((64, 96), 2, "transpose"),
        ((32, 48), 3, "bilinear"),
        ((128, 64), 4, "transpose"),
        ((8, 8), 3, "bilinear"),
    ],
)
def test_logits_have_the_input_size_and_one_channel(size, depth, upsampling):
    model = build_unet(input_shape=(*size, 3), depth=depth, base_filters=4, upsampling=upsampling)
    out = model(np.zeros((2, *size, 3), np.float32))
    assert tuple(out.shape) == (2, *size, 1)
    assert out.dtype == "float32"


def test_unspecified_size_accepts_any_multiple_of_2_to_the_depth():
    model = build_unet(depth=2, base_filters=4)
    for size in ((16, 24), (40, 12)):
        assert tuple(model(np.zeros((1, *size, 3), np.float32)).shape) == (1, *size, 1)


def test_layer_names_are_deterministic():
    names = [layer.name for layer in build_unet(input_shape=(32, 32, 3), depth=2, base_filters=4).layers]
    for expected in (
        "enc1_conv1",
        "enc1_bn1",
        "enc2_pool",
        "bottleneck_conv2",
        "dec2_up",
        "dec1_concat",
        "dec1_conv2",
    ):
        assert expected in names
    assert names[-1] == "logits"
    # Built twice, the same names: checkpoints and TensorBoard graphs line up across runs.
    assert names == [
        layer.name for layer in build_unet(input_shape=(32, 32, 3), depth=2, base_filters=4).layers
    ]


def test_filters_double_per_level_and_options_change_the_graph():
    model = build_unet(input_shape=(32, 32, 3), depth=3, base_filters=8, batch_norm=False, dropout=0.3)
    assert [model.get_layer(f"enc{i}_conv1").filters for i in (1, 2, 3)] == [8, 16, 32]
    assert model.get_layer("bottleneck_conv1").filters == 64
    assert model.get_layer("bottleneck_dropout").rate == 0.3
    assert not any(layer.name.endswith("_bn1") for layer in model.layers)
    assert isinstance(model.get_layer("dec1_up"), keras.layers.Conv2DTranspose)
    bilinear = build_unet(input_shape=(32, 32, 3), depth=1, base_filters=4, upsampling="bilinear")
    assert isinstance(bilinear.get_layer("dec1_up"), keras.layers.UpSampling2D)


def test_logits_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_unet(input_shape=(16, 16, 3), depth=2, base_filters=4)
        assert model.get_layer("enc1_conv1").compute_dtype == "float16"
        assert model(np.zeros((1, 16, 16, 3), np.float32)).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_sizes_not_divisible_by_2_to_the_depth_are_rejected_with_a_hint():
    with pytest.raises(
        ValueError, match=r"100x150 does not work with depth 3: height 100 and width 150 not divisible"
    ):
        build_unet(input_shape=(100, 150, 3), depth=3)
    with pytest.raises(ValueError, match=r"e\.g\. use 104x152"):
        check_input_size(100, 150, 3)
    check_input_size(256, 384, 4)


@pytest.mark.parametrize(
    ("size", "scale", "depth", "encoder", "expected"),
    [
        ((192, 288), 0.67, 4, "unet", (128, 192)),  # the default recipe's progressive size
        ((192, 288), 0.5, 4, "unet", (96, 144)),
        ((64, 96), 0.67, 2, "unet", (40, 64)),  # each side rounded down to a multiple of 2**depth
        ((512, 768), 0.67, 4, "resnet50", (320, 512)),  # a backbone: multiples of 32
    ],
)
def test_scaled_sizes_are_sizes_the_model_takes(size, scale, depth, encoder, expected):
    scaled = scaled_size(size, scale, depth, encoder=encoder)
    assert scaled == expected
    check_input_size(*scaled, depth, encoder=encoder)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 0}, "depth must be >= 1"),
        ({"base_filters": 0}, "base_filters must be >= 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"upsampling": "nearest"}, "upsampling must be one of transpose, bilinear"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_unet(**kwargs)
