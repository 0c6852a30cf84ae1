"""The exported SavedModel: reloaded without Keras objects, fed real JPEG bytes, compared with Keras."""

from __future__ import annotations

import io
import struct
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer.export import MODEL_NAME, encode_mask_png, export_saved_model
from trainer.model.losses import bce_dice_loss
from trainer.model.shape import DEFAULT_REFINEMENT, EdgeRefinement
from trainer.model.unet import build_unet
from trainer.refine import refine_logits

MODEL_SIZE = (64, 96)
NO_REFINEMENT = EdgeRefinement(radius=0)


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A bright blob (the 'car') on a dark, noisy background, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    blob = ((yy - height / 2) / (height / 3)) ** 2 + ((xx - width / 2) / (width / 3)) ** 2 < 1
    image = rng.integers(0, 60, (height, width, 3)) + blob[..., None] * 170
    return image.astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny U-Net, fitted a few steps so its masks are not all one value, and its SavedModel."""
    keras.utils.set_random_seed(0)
    # No batch norm: its moving averages would need far more steps than this to settle.
    model = build_unet(input_shape=(*MODEL_SIZE, 3), depth=2, base_filters=4, batch_norm=False)
    images = np.stack([photo(*MODEL_SIZE, seed) for seed in range(4)]).astype(np.float32) / 255
    masks = (images.mean(axis=-1, keepdims=True) > 0.4).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=bce_dice_loss)
    model.fit(images, masks, epochs=15, verbose=0)
    model_dir = tmp_path_factory.mktemp("model")
    export_dir = export_saved_model(model, model_dir, MODEL_SIZE)
    return model, export_dir, tf.saved_model.load(str(export_dir))


def test_layout_and_signatures(exported):
    _, export_dir, loaded = exported
    assert export_dir.parts[-2:] == (MODEL_NAME, "1")
    assert (export_dir / "saved_model.pb").is_file() and (export_dir / "variables").is_dir()
    assert set(loaded.signatures) == {
        "serving_default",
        "mask_png",
        "mask_png_tta",
        "alpha_png",
        "alpha_png_tta",
        "predict_images",
    }
    inputs = {name: sig.structured_input_signature[1] for name, sig in loaded.signatures.items()}
    assert inputs["serving_default"]["image_bytes"].dtype == tf.string
    assert inputs["mask_png"]["image_bytes"].shape.as_list() == [None]
    assert inputs["mask_png"]["orientation"].dtype == tf.int32
    assert inputs["predict_images"]["images"].shape.as_list() == [None, None, None, 3]
    outputs = {name: set(sig.structured_outputs) for name, sig in loaded.signatures.items()}
    assert outputs["serving_default"] == outputs["predict_images"] == {"probabilities", "mask"}
    assert outputs["mask_png"] == {"mask_png_bytes", "height", "width", "car_fraction"}


def test_savedmodel_matches_the_keras_model_at_its_input_size(exported, tmp_path):
    """Without refinement the SavedModel is the Keras model; with it (the default), the Keras
    model's logits refined by trainer.refine with the photo at twice the size as the guide."""
    model, _, loaded = exported
    images = np.stack([photo(*MODEL_SIZE, seed) for seed in (10, 11)]).astype(np.float32) / 255
    logits = model(images, training=False)
    plain = loaded_export(model, tmp_path, NO_REFINEMENT).signatures["predict_images"]
    guides = tf.image.resize(images, DEFAULT_REFINEMENT.guide_size(MODEL_SIZE), antialias=True)
    refined = tf.image.resize(refine_logits(logits, images, guides, DEFAULT_REFINEMENT), MODEL_SIZE)
    for signature, expected_logits in ((plain, logits), (loaded.signatures["predict_images"], refined)):
        expected = tf.sigmoid(expected_logits)[..., 0].numpy()
        out = signature(images=tf.constant(images))
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
        sure = np.abs(expected - 0.5) > 1e-3
        np.testing.assert_array_equal(out["mask"].numpy()[sure], (expected > 0.5)[sure])
        # The fitted model marks the blob, not everything or nothing.
        assert 0.2 < out["mask"].numpy().mean() < 0.8


def loaded_export(model: keras.Model, folder, refinement: EdgeRefinement):
    return tf.saved_model.load(str(export_saved_model(model, folder, MODEL_SIZE, refinement=refinement)))


def test_serving_default_returns_masks_at_the_photo_size(exported):
    _, _, loaded = exported
    photos = [photo(150, 230, seed) for seed in (1, 2)]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(p) for p in photos]))
    assert out["probabilities"].shape == (2, 150, 230) and out["probabilities"].dtype == tf.float32
    assert out["mask"].dtype == tf.uint8 and set(np.unique(out["mask"].numpy())) <= {0, 1}
    np.testing.assert_array_equal(out["mask"].numpy(), (out["probabilities"].numpy() > 0.5).astype(np.uint8))
    # Lossless PNG bytes and the same pixels as floats: both signatures give the same answer.
    lossless = loaded.signatures["serving_default"](
        image_bytes=tf.constant([encode(p, "PNG") for p in photos])
    )
    floats = loaded.signatures["predict_images"](
        images=tf.constant(np.stack(photos).astype(np.float32) / 255)
    )
    # Up to 1e-3 apart: the edge refinement divides by small colour variances, which magnifies the
    # rounding differences between the network's batched and one-photo runs.
    np.testing.assert_allclose(floats["probabilities"].numpy(), lossless["probabilities"].numpy(), atol=2e-3)


def test_png_input_and_mixed_sizes_in_one_batch_need_mask_png(exported):
    _, _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match="all photos of a batch must have the same size"):
        loaded.signatures["serving_default"](
            image_bytes=tf.constant([encode(photo(64, 96, 0)), encode(photo(80, 100, 0))])
        )
    png = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(photo(70, 90, 3), "PNG")]))
    assert png["mask"].shape == (1, 70, 90)


def test_mask_png_answers_each_photo_at_its_own_size(exported):
    _, _, loaded = exported
    photos = [photo(150, 230, 1), photo(61, 77, 2), photo(64, 96, 3)]
    out = loaded.signatures["mask_png"](
        image_bytes=tf.constant([encode(p) for p in photos]), orientation=tf.constant([1, 1, 1])
    )
    assert out["height"].numpy().tolist() == [150, 61, 64]
    assert out["width"].numpy().tolist() == [230, 77, 96]
    for png, image, fraction in zip(
        out["mask_png_bytes"].numpy(), photos, out["car_fraction"].numpy(), strict=True
    ):
        mask = Image.open(io.BytesIO(png))
        assert mask.mode == "1" and mask.size == (image.shape[1], image.shape[0])
        values = np.asarray(mask.convert("L"))
        assert set(np.unique(values)) <= {0, 255}
        assert fraction == pytest.approx((values == 255).mean(), abs=1e-6)
        single = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(image)]))
        np.testing.assert_array_equal(values // 255, single["mask"].numpy()[0])


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (5, 9), (2, 16), (1280, 1918)])
def test_mask_png_is_a_valid_1_bit_png_of_exactly_the_mask(size):
    """Widths not a multiple of 8 included: each pixel comes back as it went in, through Pillow,
    libpng (TensorFlow) and a hand check of the header, whose CRC the graph computes."""
    height, width = size
    mask = np.random.default_rng(height * width).random(size) > 0.5
    png = encode_mask_png(tf.constant(mask)).numpy()
    length, kind, *header = struct.unpack(">I4sIIBBBBB", png[8:29])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (length, kind) == (13, b"IHDR")
    # width, height, bit depth 1, grey, deflate, adaptive filtering, not interlaced
    assert header == [width, height, 1, 0, 0, 0, 0]
    assert struct.unpack(">I", png[29:33])[0] == zlib.crc32(png[12:29])
    with Image.open(io.BytesIO(png)) as image:
        assert (image.mode, image.size) == ("1", (width, height))
        np.testing.assert_array_equal(np.asarray(image), mask)
        np.testing.assert_array_equal(np.asarray(image.convert("L")), mask * 255)
    np.testing.assert_array_equal(tf.io.decode_png(png, channels=1).numpy()[..., 0], mask * 255)


@pytest.mark.parametrize("tta", [False, True])
def test_alpha_png_is_the_probabilities_beside_mask_pngs_own_mask(exported, tta):
    _, _, loaded = exported
    photos = [photo(150, 230, 1), photo(61, 77, 2)]
    inputs = {"image_bytes": tf.constant([encode(p) for p in photos]), "orientation": tf.constant([1, 6])}
    alpha = loaded.signatures["alpha_png_tta" if tta else "alpha_png"](**inputs)
    mask = loaded.signatures["mask_png_tta" if tta else "mask_png"](**inputs)
    for key in ("mask_png_bytes", "height", "width", "car_fraction"):
        np.testing.assert_array_equal(alpha[key].numpy(), mask[key].numpy())
    assert alpha["height"].numpy().tolist() == [150, 77]  # orientation 6: shown turned
    for png, mask_png, disagreement in zip(
        alpha["alpha_png_bytes"].numpy(),
        mask["mask_png_bytes"].numpy(),
        alpha["flip_disagreement"].numpy(),
        strict=True,
    ):
        values = np.asarray(Image.open(io.BytesIO(png)))
        binary = np.asarray(Image.open(io.BytesIO(mask_png)))  # mode "1": bool
        assert len(np.unique(values)) > 2  # soft: not a 0/255 mask
        # 8-bit probabilities: >= 128 is p >= 0.502, the mask is p > 0.5 (the one at 0.5..0.502 aside)
        assert np.mean((values >= 128) != binary) < 1e-3
        assert 0.0 <= disagreement <= 1.0


def test_full_size_carvana_photo(exported, real_data):
    _, _, loaded = exported
    jpeg = sorted((real_data / "train").glob("*.jpg"))[0].read_bytes()
    out = loaded.signatures["mask_png"](image_bytes=tf.constant([jpeg]), orientation=tf.constant([1]))
    assert (int(out["height"][0]), int(out["width"][0])) == (1280, 1918)
    assert Image.open(io.BytesIO(out["mask_png_bytes"].numpy()[0])).size == (1918, 1280)


def test_export_replaces_an_earlier_version_whole(exported, tmp_path):
    model, _, _ = exported
    first = export_saved_model(model, tmp_path, MODEL_SIZE)
    (first / "stale.txt").write_text("from the earlier export")
    second = export_saved_model(model, tmp_path, MODEL_SIZE)
    assert second == first and not (second / "stale.txt").exists()
    assert sorted(p.name for p in (tmp_path / MODEL_NAME).iterdir()) == ["1"]


@pytest.mark.parametrize(
    ("stored", "transpose", "model_size", "ratio"),
    [
        ((1280, 1918), False, (192, 288), 2),  # the default model: 959x640 keeps 2x its 288x192
        ((1280, 1918), False, (256, 384), 2),
        ((1280, 1918), False, (64, 96), 8),  # 240x160 still covers 2x 96x64
        ((1280, 1918), False, (640, 959), 1),  # half the photo's size: decoded whole
        ((4000, 1000), False, (192, 288), 1),  # 1000 / 2 < 2 x 288 wide
        ((4000, 1000), True, (192, 288), 2),  # shown turned: the model's width runs along 4000
    ],
)
def test_jpeg_scale_keeps_twice_the_model_size_on_each_side(stored, transpose, model_size, ratio):
    from trainer.export import JPEG_RATIOS, jpeg_scale_index

    index = jpeg_scale_index(tf.constant(stored), tf.constant(transpose), model_size)
    assert JPEG_RATIOS[int(index)] == ratio


def test_scaled_decoding_feeds_the_network_the_pixels_of_full_resolution(real_data):
    """A 1918x1280 studio photo for the default 192x288 model is decoded at half size in the DCT
    domain (ratio 2); what the network sees differs from decoding at full size then resizing by
    about half a grey level (README, Serving: the masks' agreement, Dice >= 0.999 with a trained model)."""
    from trainer.export import UNetServing

    module = UNetServing(build_unet(depth=2, base_filters=4), (192, 288))
    photos = sorted((real_data / "train").glob("*.jpg"))[::96]
    assert len(photos) >= 4
    for path in photos:
        jpeg = path.read_bytes()
        scaled, _, size = module._decode_resized(tf.constant([jpeg]), tf.constant([1]))
        full = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)[tf.newaxis] / 255.0
        difference = np.abs(scaled.numpy() - module._to_model_size(full).numpy()) * 255
        assert size.numpy().tolist() == [[1280, 1918]]  # the mask still goes back to full size
        assert difference.mean() < 1.0
        assert np.percentile(difference, 99.9) < 3.0


def test_a_photo_decoded_whole_gets_the_masks_of_the_full_resolution_path(exported):
    """Below four times the model's size a JPEG decodes whole (ratio 1), and a PNG always does: the
    mask thresholded on the resized logits is then the probabilities' mask, pixel for pixel."""
    _, _, loaded = exported
    small, large = photo(250, 380, 5), photo(700, 1000, 6)  # the model is 64x96
    for data in (encode(small), encode(small, "PNG"), encode(large, "PNG")):
        png = loaded.signatures["mask_png"](image_bytes=tf.constant([data]), orientation=tf.constant([1]))
        decoded = tf.cast(tf.io.decode_image(data, channels=3), tf.float32)[tf.newaxis] / 255.0
        reference = loaded.signatures["predict_images"](images=decoded)["mask"].numpy()[0]
        mask = np.asarray(Image.open(io.BytesIO(png["mask_png_bytes"].numpy()[0])))  # mode "1": bool
        assert 0 < reference.mean() < 1
        np.testing.assert_array_equal(mask.astype(np.uint8), reference)
