"""Faults in training (issue #18): unreadable rows, a bad validation set, damaged checkpoints, NaN, and resume.

In-process tests for each piece, then real `accelerate launch` runs: two CPU processes with a corrupt row (both step
together and finish), all rows corrupt (a prompt, clear failure), NaN (stops before a NaN checkpoint), and a stopped
run whose newest checkpoint is truncated, resumed to the same weights as an uninterrupted run.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from ghibligan import PatchDiscriminator, UNetGenerator
from ghibligan.checkpoints import (
    MANIFEST,
    CorruptCheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from ghibligan.losses import Pix2PixObjective
from ghibligan.training import NonFiniteLossError, training_step

from .helpers import photo_like
from .test_training import ROOT, TINY_UNET, crops, moved, prepare_gan, snapshot, train_script


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_split(folder: Path, split: str, count: int, broken=(), seed: int = 0) -> None:
    """``data/{split}-00000.parquet`` of ``count`` photo → inverted-photo pairs; the inputs of rows ``broken`` are
    truncated PNGs."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    photos = [photo_like(72, 64, seed=seed + i) for i in range(count)]
    inputs = [
        {"bytes": png_bytes(p)[:80], "path": f"broken_{i}.png"}
        if i in broken
        else {"bytes": png_bytes(p), "path": None}
        for i, p in enumerate(photos)
    ]
    targets = [{"bytes": png_bytes(255 - p), "path": None} for p in photos]
    features = datasets.Features({"input_image": datasets.Image(), "target_image": datasets.Image()})
    rows = datasets.Dataset.from_dict({"input_image": inputs, "target_image": targets}, features=features)
    rows.to_parquet(str(folder / "data" / f"{split}-00000.parquet"))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def equal_weights(a: Path, b: Path) -> bool:
    first, second = (UNetGenerator.from_pretrained(folder).state_dict() for folder in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# -- in-process ------------------------------------------------------------------------------------------------------


def saved_checkpoints(tmp_path, steps=(2, 4)) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer]:
    accelerator = Accelerator(cpu=True)
    generator = UNetGenerator(num_downs=5, ngf=8)
    optimizer = torch.optim.Adam(generator.parameters())
    generator, optimizer = accelerator.prepare(generator, optimizer)
    for step in steps:
        with torch.no_grad():
            next(generator.parameters()).fill_(step)  # tells the checkpoints apart
        save_checkpoint(accelerator, tmp_path, step, accelerator.unwrap_model(generator))
    return accelerator, generator, optimizer


def test_a_damaged_checkpoint_file_is_named_and_resume_falls_back_to_the_previous_one(tmp_path):
    accelerator, generator, _ = saved_checkpoints(tmp_path)
    newest, previous = tmp_path / "checkpoint-4", tmp_path / "checkpoint-2"
    assert set(json.loads((newest / MANIFEST).read_text())["files"]) >= {
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "generator/model.safetensors"
    }  # fmt: skip
    verify_checkpoint(newest)
    truncate(newest / "optimizer.bin")
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint-4/optimizer\.bin: \d+ bytes, \d+ were written"):
        verify_checkpoint(newest)
    assert load_checkpoint(accelerator, [newest, previous]) == previous
    assert next(generator.parameters()).flatten()[0].item() == 2  # checkpoint-2's weights

    data = bytearray((previous / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    (previous / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"No checkpoint could be resumed from: checkpoint-4: .*"):
        load_checkpoint(accelerator, [newest, previous])  # never silently starts anew over damaged checkpoints


def test_an_older_checkpoint_without_a_manifest_is_checked_by_loading_each_file(tmp_path):
    saved_checkpoints(tmp_path, steps=(2,))
    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / MANIFEST).unlink()
    verify_checkpoint(checkpoint)
    truncate(checkpoint / "generator" / "model.safetensors")
    with pytest.raises(CorruptCheckpointError, match=r"generator/model\.safetensors: cannot be loaded"):
        verify_checkpoint(checkpoint)


def test_non_finite_weights_are_never_saved(tmp_path):
    accelerator = Accelerator(cpu=True)
    generator = UNetGenerator(num_downs=5, ngf=8)
    with torch.no_grad():
        next(generator.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="holds NaN or infinite values: not saving it"):
        save_checkpoint(accelerator, tmp_path, 2, generator)
    assert not list(tmp_path.iterdir())  # nothing written, not even a .tmp folder


def test_a_non_finite_loss_stops_before_the_update_or_drops_it_under_the_flag():
    accelerator = Accelerator(cpu=True)
    generator, discriminator = UNetGenerator(num_downs=5, ngf=8), PatchDiscriminator(ndf=8, n_layers=2)
    generator, discriminator, optimizers, schedulers = prepare_gan(accelerator, generator, discriminator)
    batch = crops()
    batch["target"][0, 0, 0, 0] = float("nan")  # a broken target: D's and L1's losses are NaN
    g_before, d_before = snapshot(generator), snapshot(discriminator)
    with pytest.raises(NonFiniteLossError, match=r"Step 8: the loss is not finite \(loss_d = nan"):
        training_step(accelerator, Pix2PixObjective(), generator, discriminator, optimizers, schedulers, batch, step=7)
    assert not moved(generator, g_before) and not moved(discriminator, d_before)
    logs = training_step(
        accelerator, Pix2PixObjective(), generator, discriminator, optimizers, schedulers, batch, 7, skip_nonfinite=True
    )
    assert logs["skipped_d"] == 1 and logs["skipped_g"] == 1
    assert not moved(generator, g_before) and not moved(discriminator, d_before)
    logs = training_step(accelerator, Pix2PixObjective(), generator, discriminator, optimizers, schedulers, crops(), 8)
    assert "skipped_d" not in logs and moved(generator, g_before)  # the next good batch trains as usual


def test_an_error_in_validation_is_reported_and_training_goes_on(monkeypatch, tmp_path, caplog):
    def broken_validate(*args, **kwargs):
        raise RuntimeError("out of memory in validation")

    monkeypatch.setattr(train_script, "validate", broken_validate)
    args = train_script.parse_args(["--train_data_dir", "pairs", "--output_dir", str(tmp_path)])
    accelerator = Accelerator(cpu=True)
    pairs = [(Image.fromarray(photo_like(40, 40)),) * 2]
    train_script.run_validation(args, accelerator, UNetGenerator(num_downs=5, ngf=8), {None: pairs}, step=3)  # no raise
    assert "Validation at step 3 failed" in caplog.text and "out of memory in validation" in caplog.text


# -- real runs under `accelerate launch` ------------------------------------------------------------------------------


def launch(args, processes=1, timeout=300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--dynamo_backend", "no"]
    command += ["--mixed_precision", "no", "--num_processes", str(processes)]
    command += ["--multi_gpu"] if processes > 1 else []
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*command, str(ROOT / "train_accelerate.py"), "--report_to", "none", *TINY_UNET, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip


def succeeded(result: subprocess.CompletedProcess) -> bool:
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-6000:])
    return result.returncode == 0


@pytest.mark.slow
def test_two_processes_step_together_past_a_corrupt_row_and_save_despite_a_dead_validation_set(tmp_path):
    write_split(tmp_path / "pairs", "train", 8, broken={3})
    write_split(tmp_path / "pairs", "validation", 2, broken={0, 1}, seed=50)
    out = tmp_path / "run"
    # 8 rows on 2 processes, batch 1: 4 steps are one epoch, so the corrupt row is read; validation at every step
    result = launch(
        ["--train_data_dir", tmp_path / "pairs", "--output_dir", out, "--norm", "instance", "--max_train_steps", 4,
         "--checkpointing_steps", 4, "--validation_steps", 1],
        processes=2,
    )  # fmt: skip
    assert succeeded(result)  # both processes finished (the script also checks their weights are identical)
    assert "broken_3.png" in result.stderr  # the corrupt row was met
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]
    assert equal_weights(out, out / "checkpoint-4" / "generator")  # the final model is saved
    assert not (out / "validation").exists()  # nothing to validate on, and the run went on


@pytest.mark.slow
def test_all_rows_corrupt_stop_two_processes_promptly_without_a_model(tmp_path):
    write_split(tmp_path / "pairs", "train", 6, broken=set(range(6)))
    write_split(tmp_path / "pairs", "validation", 1, seed=50)
    out = tmp_path / "run"
    result = launch(
        ["--train_data_dir", tmp_path / "pairs", "--output_dir", out, "--norm", "instance", "--max_train_steps", 50],
        processes=2,
        timeout=180,  # it looped forever before
    )
    assert result.returncode != 0
    assert "UnreadableDataError" in result.stderr and "broken_" in result.stderr
    assert not (out / "model.safetensors").exists() and not list_checkpoints(out)


@pytest.mark.slow
def test_a_diverging_run_stops_before_a_nan_checkpoint_or_drops_those_updates_under_the_flag(tmp_path):
    """lr = 1e30: the first update makes the weights huge, the next losses NaN, on two processes."""
    write_split(tmp_path / "pairs", "train", 6)
    write_split(tmp_path / "pairs", "validation", 1, seed=50)
    common = ["--train_data_dir", tmp_path / "pairs", "--norm", "instance", "--learning_rate", 1e30]
    common += ["--max_train_steps", 5, "--checkpointing_steps", 1]
    out = tmp_path / "stop"
    result = launch([*common, "--output_dir", out], processes=2)
    assert result.returncode != 0 and "NonFiniteLossError" in result.stderr
    assert not (out / "model.safetensors").exists() and len(list_checkpoints(out)) < 5
    for checkpoint in list_checkpoints(out):
        generator = UNetGenerator.from_pretrained(checkpoint / "generator")
        assert all(torch.isfinite(p).all() for p in generator.parameters())

    out = tmp_path / "skip"
    assert succeeded(launch([*common, "--output_dir", out, "--skip_nonfinite_steps"], processes=2))
    assert [p.name for p in list_checkpoints(out)][-1] == "checkpoint-5"  # every process went on, in step
    assert all(torch.isfinite(p).all() for p in UNetGenerator.from_pretrained(out).parameters())


@pytest.mark.slow
def test_resume_after_a_stop_and_a_truncated_newest_checkpoint_repeats_the_uninterrupted_run(tmp_path):
    """Stopped with --max_train_steps (not killed: a clean stop at a step is what makes the comparison exact)."""
    write_split(tmp_path / "pairs", "train", 5)  # 5 steps an epoch: the resumed run crosses an epoch boundary
    write_split(tmp_path / "pairs", "validation", 1, seed=50)
    # U-Net dropout, random crops and flips, validation between steps: every source of randomness is in play
    common = ["--train_data_dir", tmp_path / "pairs", "--random_flip", "--checkpointing_steps", 2]
    common += ["--validation_steps", 3]
    assert succeeded(launch([*common, "--output_dir", tmp_path / "uninterrupted", "--max_train_steps", 8]))

    out = tmp_path / "stopped"
    assert succeeded(launch([*common, "--output_dir", out, "--max_train_steps", 4]))
    truncate(out / "checkpoint-4" / "model.safetensors")
    result = launch([*common, "--output_dir", out, "--max_train_steps", 8, "--resume_from_checkpoint", "latest"])
    assert succeeded(result)  # fell back to checkpoint-2, with a warning naming the file
    assert "checkpoint-4/model.safetensors" in result.stderr
    verify_checkpoint(out / "checkpoint-4")  # written anew
    assert equal_weights(out, tmp_path / "uninterrupted")  # exactly (torch.equal) the uninterrupted run's weights
