"""U-Nets on pretrained Keras Applications backbones: feature maps, preprocessing, weights by path,
freezing, mixed precision, the export served by ``carvana predict``, and training with freezing."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import trainer.train
from trainer.export import export_saved_model
from trainer.model.encoders import (
    BACKBONES,
    ENCODER_LAYER,
    BackbonePreprocessing,
    build_encoder,
    build_encoder_unet,
    set_encoder_trainable,
)
from trainer.model.losses import bce_dice_loss
from trainer.model.shape import PRETRAINED_ENCODERS, EdgeRefinement
from trainer.predict import main as predict_main
from trainer.train import train
from trainer.training.callbacks import restore_checkpoint
from trainer.training.config import parse_config

SIZE = (64, 96)
TINY = {"encoder": "mobilenetv2", "alpha": 0.35, "encoder_weights": "none", "input_shape": (*SIZE, 3)}


def tiny_model(**kwargs) -> keras.Model:
    return build_encoder_unet(**{**TINY, **kwargs})


def blobs(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright ellipses on dark noise, float in [0, 1], and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    images = rng.uniform(0, 0.25, (count, *SIZE, 3)).astype(np.float32)
    masks = np.zeros((count, *SIZE, 1), np.float32)
    for i in range(count):
        cy, cx = rng.uniform(0.4, 0.6) * SIZE[0], rng.uniform(0.4, 0.6) * SIZE[1]
        inside = ((yy - cy) / (SIZE[0] * 0.3)) ** 2 + ((xx - cx) / (SIZE[1] * 0.3)) ** 2 < 1
        images[i][inside] += 0.6
        masks[i, ..., 0] = inside
    return images, masks


def test_the_backbone_names_are_the_configurations() -> None:
    assert tuple(BACKBONES) == PRETRAINED_ENCODERS


@pytest.mark.parametrize("name", PRETRAINED_ENCODERS)
def test_each_backbone_gives_feature_maps_at_strides_2_to_32(name: str) -> None:
    encoder = build_encoder(name, input_shape=(*SIZE, 3), weights="none", **(
        {"alpha": 0.35} if name == "mobilenetv2" else {}
    ))  # fmt: skip
    shapes = [tuple(output.shape[1:3]) for output in encoder.outputs]
    assert shapes == [(SIZE[0] // s, SIZE[1] // s) for s in (2, 4, 8, 16, 32)]


def test_the_model_maps_an_image_to_logits_at_its_size_with_a_u_net_decoder() -> None:
    model = tiny_model()
    assert model.output.shape[1:] == (*SIZE, 1)
    names = {layer.name for layer in model.layers}
    assert {ENCODER_LAYER, "preprocessing", "dec5_concat", "dec2_concat", "dec1_conv2", "logits"} <= names
    assert "dec1_concat" not in names  # the full-size block has no skip (the backbone starts at /2)
    assert model.get_layer("dec5_conv1").filters == 256 and model.get_layer("dec1_conv1").filters == 16


@pytest.mark.parametrize(
    ("mode", "keras_preprocess"),
    [
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("uint8_scale", keras.applications.efficientnet.preprocess_input),
    ],
)
def test_preprocessing_matches_keras_for_the_pipelines_0_to_1_images(mode: str, keras_preprocess) -> None:
    images = np.random.default_rng(0).random((2, 4, 6, 3)).astype(np.float32)
    expected = keras_preprocess(images * 255.0)
    got = BackbonePreprocessing(mode)(images)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("encoder", "mode"), [("mobilenetv2", "tf"), ("resnet50", "caffe")])
def test_each_backbone_gets_its_own_preprocessing(encoder: str, mode: str) -> None:
    assert BACKBONES[encoder].preprocessing == mode


def test_encoder_weights_load_from_a_local_file(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    saved = build_encoder("mobilenetv2", input_shape=(*SIZE, 3), weights="none", alpha=0.35)
    path = tmp_path / "mobilenetv2-0.35.weights.h5"
    saved.save_weights(path)
    keras.utils.set_random_seed(2)
    random = tiny_model()
    loaded = tiny_model(encoder_weights=path)
    expected = saved.get_layer("block_3_project").get_weights()[0]
    got = loaded.get_layer(ENCODER_LAYER).get_layer("block_3_project").get_weights()[0]
    np.testing.assert_array_equal(got, expected)
    other = random.get_layer(ENCODER_LAYER).get_layer("block_3_project").get_weights()[0]
    assert not np.allclose(other, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (100, 96, 3)}, r"100x96 does not work with encoder mobilenetv2: height 100 not "),
        ({"encoder": "vgg16"}, r"encoder must be one of mobilenetv2, efficientnetb0, efficientnetb3, "),
        ({"encoder": "resnet50"}, r"alpha \(width multiplier\) applies to mobilenetv2 only"),
        ({"encoder_weights": "/nowhere/w.h5"}, r"imagenet, none or a weights file, got '/nowhere/w.h5'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model(**kwargs)


def test_a_frozen_encoder_keeps_its_weights_and_batch_statistics_and_unfreezing_trains_it() -> None:
    keras.utils.set_random_seed(0)
    model = tiny_model()
    images, masks = blobs(4)
    encoder = model.get_layer(ENCODER_LAYER)
    bn = encoder.get_layer("bn_Conv1")

    def snapshot() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        conv = encoder.get_layer("Conv1").get_weights()[0]
        mean = bn.moving_mean.numpy()
        return conv.copy(), mean.copy(), model.get_layer("logits").get_weights()[0].copy(), bn.gamma.numpy()

    set_encoder_trainable(model, False)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=bce_dice_loss)
    before = snapshot()
    model.fit(images, masks, epochs=2, batch_size=2, verbose=0)
    frozen = snapshot()
    np.testing.assert_array_equal(frozen[0], before[0])  # no gradient step
    np.testing.assert_array_equal(frozen[1], before[1])  # batch norm in inference mode
    assert not np.allclose(frozen[2], before[2])  # the decoder learned

    set_encoder_trainable(model, True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=bce_dice_loss)
    model.fit(images, masks, epochs=1, batch_size=2, verbose=0)
    unfrozen = snapshot()
    assert not np.allclose(unfrozen[0], frozen[0]) and not np.allclose(unfrozen[1], frozen[1])


def test_mixed_precision_builds_float16_layers_and_a_float32_output() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_model()
        assert model.get_layer(ENCODER_LAYER).get_layer("Conv1").compute_dtype == "float16"
        assert model.get_layer("dec1_conv1").compute_dtype == "float16"
        assert model.output.dtype == "float32"
        assert model(np.zeros((1, *SIZE, 3), np.float32)).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- the export, as served -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, Path]:
    """The tiny MobileNetV2 U-Net fitted a few steps on blobs (so its mask is not uniform), exported.

    The encoder is frozen for the fit: its batch norms then train as they infer (a random backbone's
    moving statistics would need far more steps to settle) and the decoder learns the blobs.
    """
    keras.utils.set_random_seed(0)
    model = tiny_model()
    set_encoder_trainable(model, False)
    images, masks = blobs(8)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=bce_dice_loss)
    model.fit(images, masks, epochs=15, batch_size=4, verbose=0)
    model_dir = tmp_path_factory.mktemp("encoder-model")
    # Without edge refinement, so the served masks are the backbone U-Net's own (tests/test_export.py
    # compares the refined graph with the Keras model and trainer.refine).
    export_saved_model(model, model_dir, SIZE, refinement=EdgeRefinement(radius=0))
    return model, model_dir


def test_the_savedmodel_matches_keras(exported: tuple[keras.Model, Path]) -> None:
    model, model_dir = exported
    loaded = tf.saved_model.load(str(model_dir / "unet" / "1"))
    images, _ = blobs(3, seed=5)
    expected = tf.sigmoid(model(images, training=False))[..., 0].numpy()
    out = loaded.signatures["predict_images"](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)


def test_carvana_predict_serves_the_keras_models_mask_at_the_photos_size(
    exported: tuple[keras.Model, Path], tmp_path: Path
) -> None:
    model, model_dir = exported
    images, _ = blobs(1, seed=7)
    photo = np.round(tf.image.resize(images, (150, 230)).numpy()[0] * 255).clip(0, 255).astype(np.uint8)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "car.png")
    assert predict_main([str(folder), "--model", str(model_dir), "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "car_mask.png") as image:
        served = np.asarray(image.convert("L")) > 127
    # What the graph does around the network: resize in (antialiased), logits out (bilinear), sigmoid.
    small = tf.image.resize(photo[None].astype(np.float32) / 255, SIZE, antialias=True)
    logits = tf.image.resize(model(small, training=False), (150, 230))
    probabilities = tf.sigmoid(logits)[0, ..., 0].numpy()
    sure = np.abs(probabilities - 0.5) > 0.01
    assert served.shape == (150, 230) and sure.mean() > 0.5
    np.testing.assert_array_equal(served[sure], (probabilities > 0.5)[sure])
    assert 0.05 < served.mean() < 0.95


# --- training ------------------------------------------------------------------------------------


def test_training_freezes_then_unfreezes_and_resumes_a_frozen_checkpoint(
    sample_tfrecords: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def args(epochs: int) -> list[str]:
        return [
            "--data", str(sample_tfrecords), "--model-dir", str(tmp_path / "model"),
            "--output-data-dir", str(tmp_path / "output"), "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--tensorboard-dir", str(tmp_path / "tb"), "--image-size", "64x96", "--batch-size", "8",
            "--encoder", "mobilenetv2", "--encoder-alpha", "0.35", "--encoder-weights", "none",
            "--freeze-encoder-epochs", "1", "--epochs", str(epochs), "--verbose", "2",
            "--profile-batches", "0", "--preview-images", "1",
        ]  # fmt: skip

    first = train(parse_config(args(1), {}))
    assert first.epochs_completed == 1 and first.stop_reason == "completed"
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["encoder_frozen"] is True
    log = capsys.readouterr().out
    assert "U-Net on mobilenetv2 alpha 0.35 (none weights), decoder base 16" in log
    assert "encoder frozen for 1 epochs" in log and "unfrozen" not in log

    # The rerun restores the frozen checkpoint into a frozen model (its optimizer state fits: Keras
    # would warn and skip it otherwise), then unfreezes for epoch 2.
    skipped: list[list[str]] = []

    def restore(*args: object) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restore_checkpoint(*args)
        skipped.append([str(w.message) for w in caught if "Skipping variable loading" in str(w.message)])

    monkeypatch.setattr(trainer.train, "restore_checkpoint", restore)
    second = train(parse_config(args(2), {}))
    log = capsys.readouterr().out
    assert second.epochs_completed == 2 and "resuming after epoch 1" in log
    assert "encoder unfrozen from epoch 2" in log
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["encoder_frozen"] is False
    metadata = json.loads(
        (tmp_path / "model" / "unet" / "1" / "assets.extra" / "training-metadata.json").read_text()
    )
    assert metadata["encoder"] == "mobilenetv2" and metadata["epochs_completed"] == 2
    assert len(re.findall(r"^epoch=\d+ ", log, re.MULTILINE)) == 1  # only epoch 2 ran again
    assert skipped == [[]]
