"""Training checkpoints: ``output_dir/checkpoint-{step}`` folders, written atomically, capped, resumable, loadable.

Each folder holds what `Accelerator.save_state` writes (models, optimizers, schedulers, grad scaler, every process's
RNG state), to resume a run, and the generator in `save_pretrained` form under ``generator/`` (config.json +
model.safetensors + model card), to use it: ``Cartoonizer.from_pretrained("run/checkpoint-500/generator")``.
A checkpoint is written under a ``.tmp`` name and renamed once complete, so an interrupted save never becomes
"latest"; its last file, ``checkpoint.json``, records every file's size and SHA-256, so a file truncated or damaged
later is found (`verify_checkpoint`) and `load_checkpoint` falls back to the previous intact checkpoint. Weights that
are not finite are never saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .models.hub import first_non_finite

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
GENERATOR_FOLDER = "generator"
MANIFEST = "checkpoint.json"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or damaged; the message names it."""


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


def resume_candidates(output_dir: str | Path, resume_from_checkpoint: str | None) -> list[Path]:
    """The checkpoints to resume from, in the order to try them: for ``"latest"`` every complete checkpoint in
    ``output_dir``, newest first (none yet: an empty list, a new run); else the one folder given."""
    if not resume_from_checkpoint:
        return []
    if resume_from_checkpoint == "latest":
        return list_checkpoints(output_dir)[::-1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(
            f"`resume_from_checkpoint` {resume_from_checkpoint!r} is not a folder: pass a checkpoint-N folder "
            "or 'latest'."
        )
    checkpoint_step(path)
    return [path]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | Path) -> None:
    """Record the size and SHA-256 of every file under ``folder`` in ``folder/checkpoint.json``."""
    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.name != MANIFEST)
    manifest = {str(f.relative_to(folder)): {"size": f.stat().st_size, "sha256": _sha256(f)} for f in files}
    (folder / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1))


def verify_checkpoint(path: str | Path) -> None:
    """Raise `CorruptCheckpointError` naming the first missing, truncated or damaged file of checkpoint ``path``.

    With a ``checkpoint.json`` (every checkpoint this module wrote), each file's size and SHA-256 are compared.
    Without one (an older checkpoint), each file is loaded: safetensors with `safetensors.torch.load_file`, the rest
    with `torch.load`, as `Accelerator.load_state` would.
    """
    path = Path(path)
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptCheckpointError(f"{manifest}: unreadable manifest ({error}).") from error
        for name, expected in files.items():
            file = path / name
            if not file.is_file():
                raise CorruptCheckpointError(f"{file}: missing.")
            size = file.stat().st_size
            if size != expected["size"]:
                raise CorruptCheckpointError(f"{file}: {size} bytes, {expected['size']} were written (truncated?).")
            if _sha256(file) != expected["sha256"]:
                raise CorruptCheckpointError(f"{file}: its contents changed since it was written (SHA-256 differs).")
        return
    for file in sorted(
        f for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".pkl", ".pt")
    ):
        try:
            if file.suffix == ".safetensors":
                load_file(file)
            else:
                torch.load(file, map_location="cpu", weights_only=False)
        except Exception as error:  # whatever the format's reader raises on damage: SafetensorError, zip, pickle
            raise CorruptCheckpointError(f"{file}: cannot be loaded ({type(error).__name__}: {error}).") from error


def load_checkpoint(accelerator, candidates: list[Path]) -> Path | None:
    """Restore the training state from the first of ``candidates`` that is intact and loads on every process.

    A checkpoint that fails (`verify_checkpoint`, or `Accelerator.load_state` on any process) is skipped with a
    warning naming the file and the error, and the next (older) one is tried; every process decides together. Every
    process must call it.

    Returns:
        The checkpoint loaded, or None if ``candidates`` is empty.

    Raises:
        `CorruptCheckpointError`: none of ``candidates`` loads (each one's error is listed). A run never silently
        starts anew over checkpoints it could not read.
    """
    failures = []
    for path in candidates:
        error = None
        try:
            verify_checkpoint(path)
            accelerator.load_state(str(path))
        except Exception as caught:  # reported below, and the next checkpoint is tried
            error = caught
        failed = torch.tensor([0.0 if error is None else 1.0], device=accelerator.device)
        if accelerator.reduce(failed, "sum").item() == 0:
            if failures:
                logger.warning("Resumed from %s, the newest intact checkpoint, instead of: %s", path, failures)
            return path
        failures.append(f"{path.name}: {error or 'failed to load on another process'}")
        logger.warning("Checkpoint %s cannot be resumed from, skipping it: %s", path, error or "another process failed")
    if failures:
        raise CorruptCheckpointError(
            "No checkpoint could be resumed from: " + "; ".join(failures) + ". Delete the damaged checkpoint-N "
            "folders to start anew, or pass an intact one to --resume_from_checkpoint."
        )
    return None


def check_finite_weights(model: nn.Module, name: str = "generator") -> None:
    """Raise `FloatingPointError` naming the first parameter of ``model`` that holds NaN or infinite values."""
    parameter_name = first_non_finite(model.named_parameters())
    if parameter_name is not None:
        raise FloatingPointError(
            f"The {name}'s {parameter_name} holds NaN or infinite values: not saving it. Lower --learning_rate "
            "or clip with --max_grad_norm, and resume from the last checkpoint."
        )


def save_checkpoint(
    accelerator, output_dir: str | Path, step: int, generator: nn.Module, total_limit: int | None = None
) -> Path:
    """Save the training state and ``generator`` (unwrapped) atomically, with a manifest of the files' checksums,
    then delete the oldest checkpoints beyond ``total_limit``. Non-finite weights are refused (`FloatingPointError`)
    before anything is written. Every process must call it."""
    check_finite_weights(generator)  # the same weights on every process: all of them raise, or none
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
        write_manifest(tmp)  # last: every process's files are written
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
