"""Cartoonizer: real-photo preprocessing, sizes, alpha, tiling, batching, smoothing, clear errors."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ghibligan import Cartoonizer, ImageLoadError, load_image
from ghibligan.pipeline import auto_dtype, smooth
from ghibligan.tiling import blend_window, tile_starts

from .helpers import photo_like, save_tiny_resnet, save_tiny_unet, write_broken_files, write_png_with_huge_header


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    return save_tiny_unet(tmp_path_factory.mktemp("unet") / "ckpt")


@pytest.fixture(scope="module")
def cartoonizer(unet_dir):
    pipe = Cartoonizer.from_pretrained(unet_dir, device="cpu", dtype="float32")  # the same results on every CPU
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_loads_either_generator_class_from_the_same_call(tmp_path):
    resnet = Cartoonizer.from_pretrained(save_tiny_resnet(tmp_path / "resnet"), device="cpu")
    assert type(resnet.generator).__name__ == "ResNetGenerator"
    out = resnet(photo_like(50, 30))
    assert len(out) == 1 and out[0].size == (50, 30)


@pytest.mark.parametrize("size", [(301, 457), (513, 771), (33, 17)])
def test_output_has_the_input_size(cartoonizer, size):
    (out,) = cartoonizer(Image.fromarray(photo_like(*size)))
    assert out.size == size and out.mode == "RGB"


def test_exif_orientation_is_applied(cartoonizer, tmp_path):
    landscape = Image.fromarray(photo_like(80, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° CW to display": a portrait phone photo stored sideways
    landscape.save(tmp_path / "portrait.jpg", exif=exif, quality=95)

    (out,) = cartoonizer(tmp_path / "portrait.jpg")
    assert out.size == (48, 80)  # displayed as portrait
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "portrait.jpg"))
    assert np.array_equal(as_array(out), as_array(cartoonizer(upright)[0]))


def test_alpha_is_kept_aside_and_reattached(cartoonizer):
    rgba = np.dstack([photo_like(70, 50), np.tile(np.linspace(0, 255, 70, dtype=np.uint8), (50, 1))])
    (out,) = cartoonizer(Image.fromarray(rgba, "RGBA"))
    assert out.mode == "RGBA" and out.size == (70, 50)
    assert np.array_equal(np.asarray(out)[..., 3], rgba[..., 3])
    # the colour channels are computed from the RGB content, not from alpha-premultiplied pixels
    (rgb_only,) = cartoonizer(Image.fromarray(rgba[..., :3]))
    assert np.array_equal(np.asarray(out)[..., :3], np.asarray(rgb_only))


def test_grayscale_palette_cmyk_and_16_bit(cartoonizer, tmp_path):
    rgb = Image.fromarray(photo_like(64, 40))
    gray8 = rgb.convert("L")
    gray16 = Image.fromarray(np.asarray(gray8).astype(np.uint16) * 257)  # same picture at 16 bits
    gray16.save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")

    out8, out16 = cartoonizer([gray8, tmp_path / "gray16.png"])
    assert out16.size == (64, 40) and out16.mode == "RGB"
    assert np.array_equal(as_array(out8), as_array(out16))  # 16-bit rescaled, not clipped to white
    for image in (rgb.convert("P"), rgb.convert("CMYK"), rgb.convert("1"), gray8.convert("LA")):
        (out,) = cartoonizer(image)
        assert out.size == (64, 40)


def test_numpy_inputs(cartoonizer):
    array = photo_like(48, 32)
    from_uint8, from_float, from_uint16 = cartoonizer(
        [array, array.astype(np.float32) / 255.0, array.astype(np.uint16) * 257]
    )
    assert np.array_equal(as_array(from_uint8), as_array(from_float))
    assert np.array_equal(as_array(from_uint8), as_array(from_uint16))
    with pytest.raises(ImageLoadError, match=r"shape \(4, 4, 2\)"):
        cartoonizer(np.zeros((4, 4, 2), np.uint8))


def test_max_side_downscales_keeping_aspect(cartoonizer):
    (out,) = cartoonizer(photo_like(400, 200), max_side=128)
    assert out.size == (128, 64)
    (small,) = cartoonizer(photo_like(100, 50), max_side=128)  # never upscales
    assert small.size == (100, 50)


def test_equal_sizes_are_batched_and_batching_does_not_change_results(cartoonizer):
    images = [photo_like(64, 64, seed=s) for s in range(3)] + [photo_like(40, 64)]
    batches = []
    hook = cartoonizer.generator.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        together = cartoonizer(images, batch_size=4)
    finally:
        hook.remove()
    assert sorted(batches) == [1, 3]
    alone = [cartoonizer(image)[0] for image in images]
    for a, b in zip(together, alone, strict=True):
        assert np.abs(as_array(a) - as_array(b)).max() <= 1


def test_tiled_matches_untiled_away_from_seams(tmp_path):
    pipe = Cartoonizer.from_pretrained(save_tiny_resnet(tmp_path / "r"), device="cpu", dtype="float32")
    image = photo_like(384, 256)
    (full,) = pipe(image, tile=0)
    seen = []
    hook = pipe.generator.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    (tiled,) = pipe(image, tile=128, tile_overlap=32)
    hook.remove()
    assert len(seen) == 4 * 3  # 4 × 3 tiles of 128² with >= 32 px overlap, one at a time
    assert all(shape == (1, 3, 128, 128) for shape in seen)
    difference = np.abs(as_array(full) - as_array(tiled))
    assert difference.mean() < 1.0
    # tile interiors (here: the centre of the first tile) are identical to a single pass
    assert difference[32:64, 32:64].max() <= 1


def test_large_images_are_tiled_automatically_with_bounded_tile_size(tmp_path):
    pipe = Cartoonizer.from_pretrained(
        save_tiny_resnet(tmp_path / "r"), device="cpu", dtype="float32", tile_size=512, auto_tile_bytes=2**20
    )
    assert pipe.activation_bytes(2160, 3840) > 2**20  # so this photo's one pass is over the budget
    seen = []
    pipe.generator.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    (out,) = pipe(np.zeros((2160, 3840, 3), np.uint8))
    assert out.size == (3840, 2160)
    assert len(seen) > 1 and all(shape[-1] <= 512 and shape[-2] <= 512 for shape in seen)


def test_automatic_tiling_follows_the_estimated_memory_of_one_pass(tmp_path):
    """Tiling costs time (the overlap), so an image is tiled only where one pass would need more than
    `auto_tile_bytes`; `auto_tile_pixels` tiles by size instead."""
    folder = save_tiny_resnet(tmp_path / "r")
    image = photo_like(1100, 700, seed=3)  # 1100 × 700: 0.77 MP, above tile_size=512 on both sides
    needed = Cartoonizer.from_pretrained(folder, device="cpu", dtype="float32").activation_bytes(700, 1100)
    for kwargs, tiled in (
        ({"auto_tile_bytes": needed}, False),  # fits exactly: one pass
        ({"auto_tile_bytes": needed - 1}, True),
        ({"auto_tile_bytes": needed, "auto_tile_pixels": 700 * 1100 - 1}, True),  # the pixel rule, whatever memory
        ({"auto_tile_bytes": needed - 1, "auto_tile_pixels": 700 * 1100}, False),
    ):
        pipe = Cartoonizer.from_pretrained(folder, device="cpu", dtype="float32", tile_size=512, **kwargs)
        seen = []
        pipe.generator.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(tuple(args[0].shape)))
        (out,) = pipe(image)
        assert out.size == (1100, 700)
        if tiled:
            assert len(seen) > 1 and all(shape[-2] <= 512 and shape[-1] <= 512 for shape in seen), kwargs
        else:
            assert len(seen) == 1 and seen[0][-2:] == (700, 1100), kwargs


def test_the_bundled_model_runs_3840x2160_in_one_pass_and_unet_256_in_tiles():
    from ghibligan.models.limits import build_on_meta
    from ghibligan.models.presets import build_generator

    bundled = Cartoonizer.from_pretrained(device="cpu", dtype="float32")
    assert bundled._tile_side(2160, 3840, None) == 0
    unet_256 = Cartoonizer(build_on_meta(type(build_generator("unet_256")), {}), device="meta", dtype="float32")
    assert unet_256._tile_side(2160, 3840, None) == 1024


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tile_size": 0}, "`tile_size` must be a positive integer"),
        ({"auto_tile_bytes": -1}, "`auto_tile_bytes` must be a positive integer"),
        ({"auto_tile_pixels": 0}, "`auto_tile_pixels` must be a positive integer or None"),
    ],
)
def test_bad_tiling_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Cartoonizer.from_pretrained(save_tiny_resnet(tmp_path / "r"), device="cpu", **kwargs)


def test_tile_layout_covers_the_image():
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in itertools.pairwise(starts))
    window = blend_window(8, 8, overlap=4)
    assert window.min() > 0 and window[4, 4] == 1


def test_smoothing_flattens_while_keeping_size(cartoonizer):
    image = photo_like(96, 64)
    plain, smoothed = cartoonizer(image), cartoonizer(image, smoothing=1.0)
    assert smoothed[0].size == plain[0].size

    def gradient_energy(img):
        array = np.asarray(img, dtype=np.float32)
        return np.abs(np.diff(array, axis=0)).mean() + np.abs(np.diff(array, axis=1)).mean()

    assert gradient_energy(smoothed[0]) < gradient_energy(plain[0])
    noisy = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    assert gradient_energy(smooth(noisy, 0.8, "bilateral")) < gradient_energy(noisy)
    assert np.array_equal(smooth(noisy, 0.0), noisy)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_side": 0}, "`max_side` must be an integer >= 16"),
        ({"smoothing": 2.0}, r"`smoothing` must be in \[0, 1\]"),
        ({"smoothing_method": "median"}, "`smoothing_method` must be one of"),
        ({"tile": 10}, "`tile` must be 0"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
    ],
)
def test_invalid_arguments_are_named(cartoonizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cartoonizer(photo_like(32, 32), **kwargs)


def test_bad_files_raise_image_load_error_naming_them(tmp_path):
    empty, text, truncated, bomb = write_broken_files(tmp_path)
    with pytest.raises(ImageLoadError, match=r"empty\.jpg: the file is empty"):
        load_image(empty)
    with pytest.raises(ImageLoadError, match=r"notes\.png: not an image"):
        load_image(text)
    with pytest.raises(ImageLoadError, match=r"truncated\.jpg"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match=r"bomb\.png: refused as a decompression bomb"):
        load_image(bomb)
    Image.fromarray(photo_like(64, 48)).save(tmp_path / "ok.png")
    with pytest.raises(ImageLoadError, match=r"ok\.png: 64x48 is 0 MP, above the limit of 0 MP"):
        load_image(tmp_path / "ok.png", max_pixels=1000)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")


def test_bomb_is_refused_before_decoding(tmp_path):
    """A header under Pillow's own guard (179 MP) but over ours (100 MP) is refused by ours, before decoding."""
    bomb = write_png_with_huge_header(tmp_path / "bomb.png", 12_000, 12_000)
    with pytest.raises(ImageLoadError, match=r"bomb\.png: 12000x12000 is 144 MP, above the limit of 100 MP"):
        load_image(bomb)


def test_bf16_runs_and_stays_close_to_fp32(unet_dir):
    image = photo_like(64, 64)
    fp32 = Cartoonizer.from_pretrained(unet_dir, device="cpu", dtype="float32")(image)[0]
    bf16 = Cartoonizer.from_pretrained(unet_dir, device="cpu", dtype="bfloat16")
    assert bf16.generator.conv_in.weight.dtype == torch.bfloat16
    difference = np.abs(as_array(bf16(image)[0]) - as_array(fp32))
    assert difference.mean() < 3.0


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_uses_bf16_only_where_the_cpu_has_it(monkeypatch, unet_dir, native):
    """bf16 is emulated (slower than fp32) on CPUs without AVX512-BF16/AMX, so "auto" must fall back to fp32 there."""
    monkeypatch.setattr("ghibligan.pipeline.has_native_bf16_cpu", lambda: native)
    expected = torch.bfloat16 if native else torch.float32
    assert auto_dtype("cpu") == expected
    pipe = Cartoonizer.from_pretrained(unet_dir, device="cpu")  # "auto" is the default
    assert pipe.dtype == expected and pipe.generator.conv_in.weight.dtype == expected
    assert Cartoonizer.from_pretrained(unet_dir, device="cpu", dtype="float32").dtype == torch.float32
    with pytest.raises(ValueError, match="'auto' or one of"):
        pipe.to(device="meta", dtype="half")
    assert pipe.device == torch.device("cpu")  # a refused call changes nothing


def test_from_pretrained_without_a_bundled_model_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr("ghibligan.pipeline.PRETRAINED_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="Pass a checkpoint folder or Hub repo id"):
        Cartoonizer.from_pretrained()
