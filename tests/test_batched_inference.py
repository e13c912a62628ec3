"""The batched uint8 inference path (uint8 to and from the device, tiles in batches) against the float path it
replaced: per image, normalized on the CPU, one tile at a time."""

import numpy as np
import pytest
import torch
from PIL import Image

from ghibligan import Cartoonizer, pipeline
from ghibligan.image_io import pil_to_tensor, tensor_to_uint8
from ghibligan.pipeline import model_output_to_uint8, uint8_to_model_input
from ghibligan.tiling import tiled_apply

from .helpers import photo_like, save_tiny_unet


@pytest.fixture(scope="module")
def cartoonizer(tmp_path_factory):
    # float32: the float path below runs the same generator directly (the library default, "auto", may pick bf16)
    pipe = Cartoonizer.from_pretrained(
        save_tiny_unet(tmp_path_factory.mktemp("unet") / "ckpt"), device="cpu", dtype="float32"
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.inference_mode()
def float_path(cartoonizer: Cartoonizer, image: np.ndarray, tile: int = 0, overlap: int = 0) -> np.ndarray:
    """The previous path: a float tensor made on the CPU, the generator per image (or per tile), uint8 at the end."""

    def generate(batch: torch.Tensor) -> torch.Tensor:
        return cartoonizer.generator(batch.contiguous(memory_format=torch.channels_last)).float()

    tensor = pil_to_tensor(Image.fromarray(image))  # (3, H, W)
    result = tiled_apply(generate, tensor, tile, overlap) if tile else generate(tensor[None])[0]
    return tensor_to_uint8(result).astype(np.int16)


def test_uint8_conversions_round_trip_exactly():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(2, 16, 16, 3)
    normalized = uint8_to_model_input(pixels)
    assert normalized.shape == (2, 3, 16, 16) and normalized.min() == -1 and normalized.max() == 1
    assert torch.equal(model_output_to_uint8(normalized), pixels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uint8_conversions_in_slices_of_rows_equal_one_pass(monkeypatch, dtype):
    """On CPU, large images are converted a few rows at a time (in cache): the same values as one pass."""
    images = torch.randint(0, 256, (2, 45, 31, 3), dtype=torch.uint8)
    output = torch.rand(2, 3, 45, 31, dtype=dtype) * 2.2 - 1.1  # out of range too: clamped
    one_pass = uint8_to_model_input(images, dtype), model_output_to_uint8(output)
    monkeypatch.setattr(pipeline, "CONVERSION_SLICE_PIXELS", 31 * 4)  # 4 rows a slice: 12 slices, the last one shorter
    sliced = uint8_to_model_input(images, dtype), model_output_to_uint8(output)
    assert torch.equal(sliced[0], one_pass[0]) and sliced[0].dtype == dtype and sliced[0].shape == (2, 3, 45, 31)
    assert torch.equal(sliced[1], one_pass[1]) and sliced[1].dtype == torch.uint8 and sliced[1].shape == (2, 45, 31, 3)


@pytest.mark.parametrize("size", [(37, 23), (64, 64), (101, 67)])
def test_batched_uint8_equals_the_float_path_at_odd_sizes(cartoonizer, size):
    images = [photo_like(*size, seed=seed) for seed in range(5)]
    batched = cartoonizer(images, batch_size=3)  # a batch of 3 and one of 2
    for image, output in zip(images, batched, strict=True):
        difference = np.abs(np.asarray(output, dtype=np.int16) - float_path(cartoonizer, image))
        assert difference.max() <= 1, f"{size}: off by {difference.max()} grey levels"


def test_generate_uint8_keeps_arrays_and_device_tensors_as_they_came(cartoonizer):
    images = np.stack([photo_like(48, 40, seed=seed) for seed in range(4)])  # (4, 40, 48, 3)
    from_array = cartoonizer.generate_uint8(images, batch_size=3)
    from_tensor = cartoonizer.generate_uint8(torch.from_numpy(images), batch_size=4)
    assert isinstance(from_array, np.ndarray) and from_array.shape == images.shape and from_array.dtype == np.uint8
    assert isinstance(from_tensor, torch.Tensor) and from_tensor.dtype == torch.uint8
    assert np.abs(from_array.astype(np.int16) - from_tensor.numpy()).max() <= 1
    with pytest.raises(ValueError, match=r"`images` must be a \(B, H, W, 3\) uint8 .* got shape \(40, 48, 3\)"):
        cartoonizer.generate_uint8(images[0])


@pytest.mark.parametrize("tile_batch_size", [1, 3, 16])
def test_tiles_in_batches_equal_the_one_tile_at_a_time_path(cartoonizer, tile_batch_size):
    image = photo_like(203, 151, seed=7)  # 4 × 3 tiles of 64 with overlap 16, the last ones shifted
    (output,) = cartoonizer(image, tile=64, tile_overlap=16, tile_batch_size=tile_batch_size)
    difference = np.abs(np.asarray(output, dtype=np.int16) - float_path(cartoonizer, image, tile=64, overlap=16))
    assert difference.max() <= 1


def test_tile_batches_respect_max_activation_bytes(cartoonizer, monkeypatch):
    passes = []
    generate = cartoonizer._generate

    def counting(batch, style=None, posterize=None, photo_side=None):
        passes.append(len(batch))
        return generate(batch, style, posterize, photo_side)

    monkeypatch.setattr(cartoonizer, "_generate", counting)
    image = photo_like(203, 151, seed=7)
    needed = cartoonizer.activation_bytes(64, 64)
    cartoonizer(image, tile=64, tile_overlap=16, tile_batch_size=8, max_activation_bytes=3 * needed)
    assert passes == [3, 3, 3, 3]  # 12 tiles, 3 fit at once
    passes.clear()
    cartoonizer(image, tile=64, tile_overlap=16, tile_batch_size=8, max_activation_bytes=None)
    assert passes == [8, 4]


def test_a_bad_tile_batch_size_is_refused(cartoonizer):
    with pytest.raises(ValueError, match=r"`tile_batch_size` must be an integer >= 1 or None, got 0"):
        cartoonizer(photo_like(32, 32), tile_batch_size=0)


def test_cpu_passes_hold_only_what_fits_the_activation_budget(cartoonizer, monkeypatch):
    """On CPU a pass holds at most `cpu_pass_images` images (larger passes cost more per image there), whatever
    ``batch_size`` asks, and the images come out as from one pass each."""
    import ghibligan.pipeline as pipeline

    images = np.stack([photo_like(40, 48, seed=i) for i in range(5)])
    per_image = cartoonizer.activation_bytes(40, 48)
    monkeypatch.setattr(pipeline, "CPU_PASS_WEIGHT_MULTIPLE", 0)
    monkeypatch.setattr(pipeline, "CPU_PASS_MIN_BYTES", 2 * per_image + 1)
    assert cartoonizer.cpu_pass_images(40, 48) == 2
    passes = []
    hook = cartoonizer.generator.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    try:
        batched = cartoonizer.generate_uint8(images, batch_size=16)
    finally:
        hook.remove()
    assert passes == [2, 2, 1]
    one_by_one = np.concatenate([cartoonizer.generate_uint8(images[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(batched, one_by_one)
    monkeypatch.setattr(pipeline, "CPU_PASS_MIN_BYTES", 10 * per_image)
    assert cartoonizer.cpu_pass_images(40, 48) == 10
