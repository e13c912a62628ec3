"""The model bundled in the package: the default of the pipeline, the CLI and the Space, offline."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from ghibligan import Cartoonizer, UNetGenerator
from ghibligan.pipeline import bundled_model_path

from .helpers import photo_like


def test_bundled_checkpoint_is_complete_small_and_described():
    path = bundled_model_path()
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "metrics.json", "model.safetensors"]
    assert (path / "model.safetensors").stat().st_size < 10e6  # a few MB (fp16)
    card = (path / "README.md").read_text()
    assert "toon:painterly" in card and "not** on Studio Ghibli images" in card
    assert "bash scripts/train_bundled_model.sh" in card
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["all"]["images"] >= 5
    assert f"{metrics['all']['psnr_model']:.2f} dB" in card  # the card states what was measured
    reference = metrics["reference"]  # the unet_256 baseline, same pairs and steps, is stated beside it
    assert reference["config"]["ngf"] == 64 and f"{reference['all']['psnr_model']:.2f} dB" in card
    assert reference["all"]["error_removed"] < metrics["all"]["error_removed"]  # it beats the reference it states
    config = json.loads((path / "config.json").read_text())
    assert config["residual"] is True and config["tone_head_channels"] > 0
    assert f"tone_head_channels={config['tone_head_channels']}" in card  # the card names the architecture shipped


def test_default_cartoonizer_is_the_bundled_model_in_float32():
    cartoonizer = Cartoonizer.from_pretrained(device="cpu")
    assert isinstance(cartoonizer.generator, UNetGenerator)
    assert cartoonizer.generator.conv_in.weight.dtype.is_floating_point
    assert str(cartoonizer.generator.conv_in.weight.dtype) == "torch.float32"  # fp16 storage, fp32 compute
    photo = photo_like(300, 200)
    cartoon = np.asarray(cartoonizer(photo)[0], dtype=np.float32)
    assert cartoon.shape == photo.shape
    difference = np.abs(cartoon - photo).mean()
    assert 1.0 < difference < 60.0  # it changes the photo, and does not destroy it


def test_cli_cartoonizes_with_the_bundled_model_by_default(tmp_path):
    Image.fromarray(photo_like(160, 120)).save(tmp_path / "some.jpg")
    command = ["cartoonize", str(tmp_path / "some.jpg"), "-o", str(tmp_path / "out.png")]  # no --model
    result = subprocess.run([sys.executable, "-m", "ghibligan.cli", *command], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out.png").size == (160, 120)
