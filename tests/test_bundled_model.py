"""The models bundled in the package: the default (three styles) of the pipeline, the CLI and the Space, offline,
and the earlier painterly U-Net beside it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ghibligan import Cartoonizer, GuidedFilterGenerator, UNetGenerator, load_generator
from ghibligan.models.presets import build_generator
from ghibligan.pipeline import DEFAULT_MODEL_NAME, auto_dtype, bundled_model_path
from ghibligan.teachers.toon import PRESETS

from .helpers import photo_like

BUNDLED = [("ghibli-styles", "guided", GuidedFilterGenerator), ("toon-painterly-unet", "bundled", UNetGenerator)]
# the default model ships its ONNX export too: onnxruntime users need not wait minutes for one (test_onnx checks it)
FILES = ["README.md", "config.json", "metrics.json", "model.safetensors"]
SHIPPED_FILES = {"ghibli-styles": sorted([*FILES, "model.onnx"]), "toon-painterly-unet": FILES}


@pytest.mark.parametrize("name", [name for name, _, _ in BUNDLED])
def test_bundled_checkpoint_is_complete_and_small(name):
    path = bundled_model_path(name)
    assert sorted(p.name for p in path.iterdir()) == SHIPPED_FILES[name]
    assert (path / "model.safetensors").stat().st_size < 10e6  # a few MB (fp16)
    assert sum(p.stat().st_size for p in path.iterdir()) < 10e6
    json.loads((path / "metrics.json").read_text())  # the card's numbers are readable data


@pytest.mark.parametrize("name, preset, cls", BUNDLED)
def test_bundled_model_is_its_preset_and_survives_a_save_round_trip(tmp_path, name, preset, cls):
    """Its stored keys load unchanged into today's class, and re-saving it changes neither weights nor outputs."""
    path = bundled_model_path(name)
    model = load_generator(path)
    assert type(model) is cls
    preset_config = build_generator(preset, **({"styles": model.styles} if cls is GuidedFilterGenerator else {})).config
    shipped = model.config
    # the styles drawn at a fixed side on larger photos, and the photo smoothing's noise gain, are chosen at export
    # (scripts/styles_recipe.sh), not by the preset
    guided = cls is GuidedFilterGenerator
    assert shipped.pop("work_sides", None) == ({"ghibli": 512, "toon": 512} if guided else None)
    assert shipped.pop("smoothing_noise", None) == (5.0 if guided else None)
    assert shipped.pop("exposure_targets", None) == ({"ghibli": 0.39} if guided else None)  # its teacher's target
    toon_lines = {"toon": PRESETS["toon"].contour_lines().to_dict()}  # its teacher's line settings
    assert shipped.pop("contour_lines", None) == (toon_lines if guided else None)
    # toon brought from its work side edge-aware, as its teacher draws crisp levels at the photo's size
    assert shipped.pop("joint_upsampling", None) == ({"toon": 24.0} if guided else None)
    # its photo smoothing grows on photos larger than the 512 px it learned at
    assert shipped.pop("smoothing_reference_side", None) == (512 if guided else None)
    exported = (
        "work_sides", "smoothing_noise", "exposure_targets", "contour_lines", "joint_upsampling",
        "smoothing_reference_side",
    )  # fmt: skip
    assert shipped == {k: v for k, v in preset_config.items() if k not in exported}  # the preset builds what ships
    stored = load_file(path / "model.safetensors")
    assert set(stored) == set(model.state_dict())
    model.save_pretrained(tmp_path / "again")
    again = cls.from_pretrained(tmp_path / "again")
    resaved = load_file(tmp_path / "again" / "model.safetensors")
    assert set(resaved) == set(stored)
    assert all(torch.equal(resaved[key].to(stored[key].dtype), stored[key]) for key in stored)
    x = torch.rand(2, 3, 100, 70) * 2 - 1  # not a multiple of 32, taller than the tone head's 64-row chunks
    with torch.inference_mode():
        assert torch.equal(again(x), model(x))


def test_bundled_unet_keeps_its_layout(tmp_path):
    path = bundled_model_path("toon-painterly-unet")
    stored = load_file(path / "model.safetensors")
    assert any(key.startswith("tone_head.mlp.") for key in stored) and "conv_out.conv.weight" in stored
    # the removed full_res_channels (0) in the shipped config.json is not carried into new checkpoints
    assert "full_res_channels" in json.loads((path / "config.json").read_text())
    load_generator(path).save_pretrained(tmp_path)
    assert "full_res_channels" not in json.loads((tmp_path / "config.json").read_text())


def test_default_cartoonizer_is_the_three_style_model_in_the_auto_dtype():
    assert DEFAULT_MODEL_NAME == "ghibli-styles"
    cartoonizer = Cartoonizer.from_pretrained(device="cpu")
    assert isinstance(cartoonizer.generator, GuidedFilterGenerator)
    assert cartoonizer.styles == ["ghibli", "toon", "painterly"]
    assert cartoonizer.generator.conv_in.weight.dtype == auto_dtype("cpu")  # fp16 storage, computed in bf16 or fp32
    photo = photo_like(300, 200)
    cartoons = {style: np.asarray(cartoonizer(photo, style=style)[0], dtype=np.float32) for style in cartoonizer.styles}
    for cartoon in cartoons.values():
        assert cartoon.shape == photo.shape
        assert 1.0 < np.abs(cartoon - photo).mean() < 60.0  # it changes the photo, and does not destroy it
    assert np.abs(cartoons["ghibli"] - cartoons["painterly"]).mean() > 1.0  # the styles differ
    torch.testing.assert_close(np.asarray(cartoonizer(photo)[0], dtype=np.float32), cartoons["ghibli"])  # default
    # a larger photo: ghibli and toon are drawn at 512 px and upsampled, painterly at the photo's size
    assert [cartoonizer.work_side(index) for index in range(3)] == [512, 512, None]
    shapes = []
    hook = cartoonizer.generator.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        sizes = [cartoonizer(photo_like(700, 400), style=style)[0].size for style in cartoonizer.styles]
    finally:
        hook.remove()
    assert sizes == [(700, 400)] * 3
    assert shapes == [(1, 3, 293, 512), (1, 3, 293, 512), (1, 3, 400, 700)]


def test_cli_cartoonizes_with_the_bundled_model_by_default(tmp_path):
    Image.fromarray(photo_like(160, 120)).save(tmp_path / "some.jpg")
    command = ["cartoonize", str(tmp_path / "some.jpg"), "-o", str(tmp_path / "out.png")]  # no --model
    result = subprocess.run([sys.executable, "-m", "ghibligan.cli", *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out.png").size == (160, 120)


def test_bundled_model_smooths_a_noisy_photos_grain_and_not_a_clean_photo():
    """The default model's `smoothing_noise`: against the same weights without it, `painterly` and `toon` draw a
    noisy photo with less grain (smaller gradient energy) and a clean one nearly as before."""
    from ghibligan.metrics import gradient_energy

    shipped = load_generator(bundled_model_path()).float().eval()
    plain = GuidedFilterGenerator(**{**shipped.config, "smoothing_noise": 0.0}).eval()
    plain.load_state_dict({k: v for k, v in shipped.state_dict().items() if "noise_gain" not in k})
    clean = photo_like(256, 192, seed=3)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
    for style, most in (("toon", 0.95), ("painterly", 0.8)):  # measured: 0.89 and 0.72
        with_gain, without = (Cartoonizer(g, dtype="float32") for g in (shipped, plain))
        assert gradient_energy(with_gain(noisy, style=style)[0]) < most * gradient_energy(
            without(noisy, style=style)[0]
        )
        difference = np.abs(
            np.asarray(with_gain(clean, style=style)[0], dtype=float) - np.asarray(without(clean, style=style)[0])
        )
        assert difference.mean() < 1.0, style  # grey levels


def test_bundled_model_tiled_like_untiled_on_a_noisy_photo():
    """The noise estimate is a statistic of the whole input, so a tiled photo is measured tile by tile: the tiles
    still agree with the untiled drawing as closely as the model's other stages let them (measured 0.05 and 0.13 grey
    levels on average, 0.04 and 0.10 without the estimate)."""
    cartoonizer = Cartoonizer(load_generator(bundled_model_path()), dtype="float32")
    clean = photo_like(640, 480, seed=4)
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
    for style in ("toon", "painterly"):
        tiled = np.asarray(cartoonizer(noisy, style=style, tile=256)[0], dtype=float)
        whole = np.asarray(cartoonizer(noisy, style=style, tile=0)[0], dtype=float)
        assert np.abs(tiled - whole).mean() < 0.3, style
        assert np.percentile(np.abs(tiled - whole), 99) <= 2, style
