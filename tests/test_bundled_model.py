"""The model bundled in the package: the default of the pipeline, the CLI and the Space, offline."""

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from ghibligan import Cartoonizer, UNetGenerator, load_generator
from ghibligan.models.presets import build_generator
from ghibligan.pipeline import auto_dtype, bundled_model_path

from .helpers import photo_like


def test_bundled_checkpoint_is_complete_and_small():
    path = bundled_model_path()
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "metrics.json", "model.safetensors"]
    assert (path / "model.safetensors").stat().st_size < 10e6  # a few MB (fp16)
    json.loads((path / "metrics.json").read_text())  # the card's numbers are readable data


def test_bundled_model_is_the_bundled_preset_and_survives_a_save_round_trip(tmp_path):
    """Its stored keys load unchanged into today's class, and re-saving it changes neither weights nor outputs."""
    path = bundled_model_path()
    model = load_generator(path)
    assert model.config == build_generator("bundled").config  # the preset builds what ships
    stored = load_file(path / "model.safetensors")
    assert set(stored) == set(model.state_dict())
    assert any(key.startswith("tone_head.mlp.") for key in stored) and "conv_out.conv.weight" in stored
    model.save_pretrained(tmp_path / "again")
    again = UNetGenerator.from_pretrained(tmp_path / "again")
    resaved = load_file(tmp_path / "again" / "model.safetensors")
    assert set(resaved) == set(stored)
    assert all(torch.equal(resaved[key].to(stored[key].dtype), stored[key]) for key in stored)
    x = torch.rand(2, 3, 100, 70) * 2 - 1  # not a multiple of 32, taller than the tone head's 64-row chunks
    with torch.inference_mode():
        assert torch.equal(again(x), model(x))
    # the removed full_res_channels (0) in the shipped config.json is not carried into new checkpoints
    assert "full_res_channels" in json.loads((path / "config.json").read_text())
    assert "full_res_channels" not in json.loads((tmp_path / "again" / "config.json").read_text())


def test_default_cartoonizer_is_the_bundled_model_in_the_auto_dtype():
    cartoonizer = Cartoonizer.from_pretrained(device="cpu")
    assert isinstance(cartoonizer.generator, UNetGenerator)
    assert cartoonizer.generator.conv_in.weight.dtype == auto_dtype("cpu")  # fp16 storage, computed in bf16 or fp32
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
