"""train_accelerate.py under a real `accelerate launch`: both objectives, every source kind, DDP, crash + resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ghibligan import Cartoonizer, UNetGenerator
from ghibligan.cli import main as ghibligan_main
from ghibligan.models.unet import ToneHead
from ghibligan.models.vgg import VGG19Features
from ghibligan.training import fit_tone_head

from .helpers import photo_like

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = ["--generator", "unet", "--ngf", "8", "--num_downs", "6", "--ndf", "8", "--resolution", "64"]
pytestmark = pytest.mark.slow


def launch(args, processes=1, mixed_precision="no", timeout=300, check=True):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--dynamo_backend", "no"]
    command += ["--mixed_precision", mixed_precision, "--num_processes", str(processes)]
    command += ["--multi_gpu"] if processes > 1 else []
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [*command, str(ROOT / "train_accelerate.py"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A make-pairs dataset (parquet shards with embedded images) of 10 photos, 2 of them held out."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "photos").mkdir()
    for i in range(10):
        Image.fromarray(photo_like(96, 80, seed=i)).save(root / "photos" / f"p{i}.jpg", quality=95)
    argv = ["make-pairs", "--photos", str(root / "photos"), "--teacher", "toon", "--output_dir", str(root / "out")]
    assert ghibligan_main([*argv, "--validation_fraction", "0.2"]) == 0
    return root / "out"


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    """An imagefolder whose metadata.jsonl names two image columns."""
    root = tmp_path_factory.mktemp("imagefolder")
    with open(root / "metadata.jsonl", "w") as metadata:
        for i in range(6):
            photo = photo_like(72, 72, seed=20 + i)
            Image.fromarray(photo).save(root / f"photo{i}.png")
            Image.fromarray(255 - photo).save(root / f"cartoon{i}.png")
            row = {"input_image_file_name": f"photo{i}.png", "target_image_file_name": f"cartoon{i}.png"}
            metadata.write(json.dumps(row) + "\n")
    return root


def test_pix2pix_on_make_pairs_output_checkpoints_validates_resumes_and_saves(pairs, tmp_path):
    out = tmp_path / "run"
    common = ["--train_data_dir", pairs, "--output_dir", out, *TINY_UNET, "--train_batch_size", "2"]
    common += ["--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--validation_steps", "3"]
    common += ["--tone_head_channels", "4", "--tone_head_init_steps", "20"]
    first = launch([*common, "--max_train_steps", "6"])
    assert "Tone head fitted to the training pairs pixel by pixel" in first.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # limit 2
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-0000003.png", "step-0000006.png"]
    grid = Image.open(out / "validation" / "step-0000006.png")
    held_out = sum(pq.read_metadata(p).num_rows for p in (pairs / "data").glob("validation-*.parquet"))
    assert 1 <= held_out <= 4
    assert grid.size == (3 * 64, held_out * 64)  # input | output | target, one row per held-out photo
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # tensorboard by default
    assert "Training pix2pix for 6 steps" in first.stderr

    model = UNetGenerator.from_pretrained(out)
    assert model._hub_mixin_config["ngf"] == 8
    card = (out / "README.md").read_text()
    assert "| objective | pix2pix (vanilla GAN, λ_L1 = 100) |" in card and "| resolution | 64 |" in card
    assert (out / "discriminator" / "config.json").is_file()
    assert Cartoonizer.from_pretrained(out, device="cpu")(photo_like(50, 30))[0].size == (50, 30)

    resumed = launch([*common, "--max_train_steps", "8", "--resume_from_checkpoint", "latest"])
    assert "Resuming from checkpoint checkpoint-6 (step 6)" in resumed.stderr
    assert "Tone head fitted" not in resumed.stderr  # the checkpoint holds the trained head: no warm start again
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]


def test_cartoongan_on_an_imagefolder_in_bf16(imagefolder, tmp_path):
    save_file(VGG19Features().state_dict(), tmp_path / "vgg19.safetensors")
    out = tmp_path / "run"
    result = launch(
        ["--train_data_dir", imagefolder, "--output_dir", out, "--objective", "cartoongan", "--generator", "resnet",
         "--n_blocks", "1", "--ngf", "8", "--ndf", "8", "--resolution", "64", "--train_batch_size", "2",
         "--vgg_weights", tmp_path / "vgg19.safetensors", "--init_steps", "2", "--max_train_steps", "4",
         "--checkpointing_steps", "4", "--validation_steps", "4", "--mixed_precision", "bf16", "--random_flip"],
        mixed_precision="bf16",
    )  # fmt: skip
    assert "Mixed precision type: bf16" in result.stderr
    assert "Training cartoongan for 4 steps (2 content-only)" in result.stderr
    assert (out / "checkpoint-4").is_dir() and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["_class_name"] == "ResNetGenerator"
    assert json.loads((out / "discriminator" / "config.json").read_text())["layout"] == "cartoongan"


def test_cartoongan_without_vgg_weights_fails_at_start(imagefolder, tmp_path):
    result = launch(
        ["--train_data_dir", imagefolder, "--output_dir", tmp_path / "run", "--objective", "cartoongan",
         "--vgg_weights", tmp_path / "missing.safetensors", "--max_train_steps", "2"],
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "The CartoonGAN content loss needs ImageNet VGG19 weights: pass --vgg_weights" in result.stderr
    assert not (tmp_path / "run" / "checkpoint-2").exists()


def test_two_cpu_processes_train_ddp_with_identical_weights(pairs, tmp_path):
    out = tmp_path / "run"
    result = launch(
        ["--train_data_dir", pairs, "--output_dir", out, *TINY_UNET, "--norm", "instance", "--max_train_steps", "4",
         "--checkpointing_steps", "4", "--validation_steps", "4", "--report_to", "none", "--residual",
         "--tone_head_channels", "4", "--tone_head_init_steps", "20"],
        processes=2,
    )  # fmt: skip
    assert "[RANK 0]" in result.stderr and "[RANK 1]" in result.stderr
    assert "Distributed environment: DistributedType.MULTI_CPU" in result.stderr
    assert "batch 1 × 2 processes" in result.stderr
    assert "Tone head fitted to the training pairs pixel by pixel" in result.stderr  # on each rank, identically:
    assert "Generator weights identical on all 2 processes" in result.stderr
    assert {p.name for p in (out / "checkpoint-4").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"
    }  # fmt: skip


def test_killed_run_resumes_from_its_last_checkpoint(pairs, tmp_path):
    out = tmp_path / "run"
    args = ["--train_data_dir", pairs, "--output_dir", out, *TINY_UNET, "--checkpointing_steps", "3",
            "--validation_steps", "1000", "--report_to", "none"]  # fmt: skip
    command = [sys.executable, str(ROOT / "train_accelerate.py"), *map(str, args), "--max_train_steps", "100000"]
    process = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint-6").is_dir():
            assert process.poll() is None, "training exited before it was killed"
            assert time.time() < deadline, "no checkpoint-6 within 2 minutes"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up, as in a crash
        process.wait()
    saved = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name))
    assert saved >= 6
    (out / "checkpoint-999999.tmp").mkdir()  # what a save interrupted mid-way leaves: never "latest"

    result = launch([*args, "--max_train_steps", str(saved + 3), "--resume_from_checkpoint", "latest"])
    assert f"Resuming from checkpoint checkpoint-{saved} (step {saved})" in result.stderr
    assert (out / f"checkpoint-{saved + 3}").is_dir()
    assert UNetGenerator.from_pretrained(out)(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_help_groups_and_explains_arguments():
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_accelerate.py"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for group in ("data:", "model:", "objective:", "optimization:", "checkpoints, logging, output:"):
        assert group in result.stdout
    for flag in (
        "--dataset_name",
        "--input_column",
        "--balance_brightness",
        "--resume_from_checkpoint",
        "--vgg_weights",
    ):
        assert flag in result.stdout
    assert "accelerate launch" in result.stdout  # the example commands


def test_bad_arguments_are_refused_with_a_reason(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_accelerate.py"), "--output_dir", str(tmp_path), "--resolution", "50",
         "--train_data_dir", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "--resolution must be a multiple of 8" in result.stderr


def test_fit_tone_head_learns_a_per_pixel_posterization():
    """The warm start fits clamp(x + MLP(x)) to a pointwise target (two flat levels per channel) from a few crops."""
    torch.manual_seed(0)

    def posterize(image):
        return torch.where(image > 0, 0.5, -0.5)

    samples = [{"input": p, "target": posterize(p)} for p in (torch.rand(8, 3, 16, 16) * 2 - 1)]
    head, test = ToneHead(3, 16), torch.rand(1, 3, 32, 32) * 2 - 1
    before = (head(test) - posterize(test)).abs().mean().item()  # the identity: 0.25 on average
    fit_tone_head(head, samples, steps=1000)
    after = (head(test) - posterize(test)).abs().mean().item()
    assert after < 0.4 * before, (before, after)
    with pytest.raises(ValueError, match="no readable training pairs"):
        fit_tone_head(head, [], steps=1)
