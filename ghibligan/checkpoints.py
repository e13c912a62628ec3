"""Training checkpoints: ``output_dir/checkpoint-{step}`` folders, written atomically, capped, resumable, loadable.

Each folder holds what `Accelerator.save_state` writes (models, optimizers, schedulers, grad scaler, every process's
RNG state), to resume a run, and the generator in `save_pretrained` form under ``generator/`` (config.json +
model.safetensors + model card), to use it: ``Cartoonizer.from_pretrained("run/checkpoint-500/generator")``.
A checkpoint is written under a ``.tmp`` name and renamed once complete, so an interrupted save never becomes
"latest".
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from torch import nn

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
GENERATOR_FOLDER = "generator"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-{step}`` folders, oldest first (``.tmp`` folders of interrupted saves are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    """The step a ``checkpoint-{step}`` folder was saved at."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if not match:
        raise ValueError(f"{str(path)!r} is not a checkpoint folder (expected a name like checkpoint-500).")
    return int(match.group(1))


def resolve_resume(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """``"latest"`` → the newest complete checkpoint in ``output_dir`` (None if there is none yet), else that path."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(
            f"`resume_from_checkpoint` {resume_from_checkpoint!r} is not a folder: pass a checkpoint-N folder "
            "or 'latest'."
        )
    checkpoint_step(path)
    return path


def save_checkpoint(
    accelerator, output_dir: str | Path, step: int, generator: nn.Module, total_limit: int | None = None
) -> Path:
    """Save the training state and ``generator`` (unwrapped) atomically, then delete the oldest checkpoints beyond
    ``total_limit``. Every process must call it."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its RNG state here
    if accelerator.is_main_process:
        generator.save_pretrained(tmp / GENERATOR_FOLDER)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
