"""Reference pix2pix checkpoints convert to UNetGenerator with identical outputs."""

import subprocess
import sys

import pytest
import torch

from ghibligan import UNetGenerator
from ghibligan.cli import main
from ghibligan.convert import reference_key_map

from .reference_pix2pix import reference_unet


def randomize(model):
    """Non-trivial weights and BatchNorm statistics, so a mis-mapped tensor changes the output."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                if name.endswith("running_var"):
                    tensor.uniform_(0.5, 1.5)
                else:
                    tensor.normal_(0, 0.05 if "weight" in name else 0.1)
    return model.eval()


@pytest.mark.parametrize(
    ("num_downs", "ngf", "norm", "size"),
    [(8, 64, "batch", 256), (8, 8, "instance", 256), (7, 16, "batch", 128), (5, 8, "instance", 64)],
)
def test_converted_reference_checkpoint_matches_outputs(tmp_path, num_downs, ngf, norm, size):
    reference = randomize(reference_unet(num_downs=num_downs, ngf=ngf, norm=norm))
    torch.save(reference.state_dict(), tmp_path / "latest_net_G.pth")

    assert main(["convert-pix2pix", str(tmp_path / "latest_net_G.pth"), str(tmp_path / "converted")]) == 0
    model = UNetGenerator.from_pretrained(tmp_path / "converted")

    assert model.config == {**UNetGenerator().config, "num_downs": num_downs, "ngf": ngf, "norm": norm}
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        # the reference mutates its input in place (in-place LeakyReLU on the skip path): give it a copy
        expected = reference(x.clone())
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-4)


def test_reference_unet_256_keys_map_one_to_one():
    reference_keys = set(reference_unet().state_dict())
    assert "model.model.1.model.2.running_mean" in reference_keys
    mapped = {
        f"{reference_key_map(8)[key.rpartition('.')[0]]}.{key.rpartition('.')[2]}"
        for key in reference_keys
        if key.rpartition(".")[0] in reference_key_map(8)
    }
    assert mapped == set(UNetGenerator().state_dict())


def test_norm_flag_must_agree_with_the_weights(tmp_path, capsys):
    torch.save(reference_unet(num_downs=5, ngf=8, norm="batch").state_dict(), tmp_path / "g.pth")
    assert main(["convert-pix2pix", str(tmp_path / "g.pth"), str(tmp_path / "out"), "--norm", "instance"]) == 2
    assert "--norm instance does not match the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_non_pix2pix_state_dict_is_refused(tmp_path, capsys):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    assert main(["convert-pix2pix", str(tmp_path / "other.pth"), str(tmp_path / "out")]) == 2
    assert "not a reference pix2pix UnetGenerator state dict" in capsys.readouterr().err


def test_cli_help_and_version():
    help_text = subprocess.run(
        [sys.executable, "-m", "ghibligan.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "convert-pix2pix" in help_text and "Hugging Face Hub" in help_text
    version = subprocess.run(
        [sys.executable, "-m", "ghibligan.cli", "--version"], capture_output=True, text=True, check=True
    ).stdout
    import ghibligan

    assert version.strip() == f"ghibligan {ghibligan.__version__}"
