"""Training throughput: the data path alone, the training step alone, and `train_accelerate.py`'s real loop.

One run builds a synthetic make-pairs dataset (a parquet shard of embedded JPEG pairs of varied sizes and aspect
ratios: no photos needed) and measures, in images per second after ``--warmup`` steps:

- ``data_only_img_s``: the training DataLoader (`train_accelerate.build_train_dataloader`, prepared by accelerate)
  and `train_accelerate.device_batch` (the crop on the device), batches consumed, nothing trained;
- ``end_to_end_img_s``: `train_accelerate.main` itself, run in this process, per step (median): loading, copying,
  cropping, the loop's logging and the step;
- ``compute_only_img_s``: `ghibligan.training.training_step` on a batch already on the device (the ceiling), timed in
  the same run: each real step is followed by the same step again on the same batch (see `end_to_end`), so the two
  are paired step by step and a shared machine's drifting load cancels out of ``end_to_end_over_compute``;
- with ``--before`` (default), ``data_only_before_img_s`` and ``end_to_end_before_img_s``: the same with
  ``--no-decode_cache --dataloader_num_workers 0``, the data path before the decode-once cache (decode, resize, crop
  and normalize each sample at every epoch, on the CPU, in the training process), with its own paired ceiling;

in interleaved rounds (medians reported, every round kept under ``rounds``).

    python benchmarks/bench_training.py --device cpu --preset bundled --resolution 64 --batch_size 8 --steps 15 --json
    python benchmarks/bench_training.py --device cuda --preset unet_256 --resolution 256 --batch_size 64 \\
        --mixed_precision bf16 --channels_last --rows 2000 --steps 200 --json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import train_accelerate  # noqa: E402  (the script at the repository root, not a package module)
from ghibligan.training import training_step  # noqa: E402


def synthetic_pairs(folder: Path, rows: int, side: int, seed: int = 0) -> Path:
    """``rows`` photo-like JPEG pairs whose longer side is about ``side`` pixels (varied sizes and aspect ratios), as
    make-pairs writes them (it keeps photos up to 1024 px: 4× the usual 256² training crops)."""
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for _ in range(rows):
        width, height = int(side * rng.uniform(0.9, 1.0)), int(side * rng.uniform(0.6, 0.8))
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / rng.uniform(5, 30) + y / 17)], -1)
        photo = np.clip(base + 0.05 * rng.standard_normal(base.shape, dtype=np.float32), 0, 1)
        for images, array in ((inputs, photo), (targets, np.round(photo * 4) / 4)):  # a posterized "cartoon"
            buffer = io.BytesIO()
            Image.fromarray((array * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
            images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"input_image": datasets.Image(), "target_image": datasets.Image()})
    table = datasets.Dataset.from_dict({"input_image": inputs, "target_image": targets}, features=features)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def script_args(options: argparse.Namespace, data: Path, output: Path, *extra) -> argparse.Namespace:
    argv = [
        "--train_data_dir", data, "--output_dir", output, "--preset", options.preset,
        "--resolution", options.resolution, "--train_batch_size", options.batch_size, "--random_flip",
        "--max_train_steps", options.warmup + options.steps, "--checkpointing_steps", 10**9,
        "--validation_steps", 10**9, "--validation_split", 0, "--num_validation_images", 1,
        "--validation_max_side", 64, "--report_to", "none", "--mixed_precision", options.mixed_precision,
        "--tone_head_init_steps", 0, "--cache_dir", output.parent / "hf-cache",
        *(["--channels_last"] if options.channels_last else []), *(["--compile"] if options.compile else []),
        *(["--dataloader_num_workers", options.num_workers] if options.num_workers is not None else []), *extra,
    ]  # fmt: skip
    return train_accelerate.parse_args([str(value) for value in argv])


def accelerator_for(options: argparse.Namespace) -> Accelerator:
    return Accelerator(cpu=options.device == "cpu", mixed_precision=options.mixed_precision)


def data_only(options: argparse.Namespace, args: argparse.Namespace) -> float:
    """Images/s of the prepared training DataLoader plus the crop on the device, across epochs."""
    accelerator = accelerator_for(options)
    set_seed(args.seed)
    train_pairs, _ = train_accelerate.build_datasets(args)
    loader = accelerator.prepare(train_accelerate.build_train_dataloader(args, train_pairs, accelerator))
    done, start, epoch = 0, time.perf_counter(), 0
    while done < options.warmup + options.steps:
        loader.set_epoch(epoch)
        train_pairs.set_epoch(epoch)
        for batch in loader:
            train_accelerate.device_batch(args, batch)
            sync(accelerator.device)
            done += 1
            if done == options.warmup:
                start = time.perf_counter()
            if done == options.warmup + options.steps:
                break
        epoch += 1
    return options.steps * options.batch_size / (time.perf_counter() - start)


def end_to_end(options: argparse.Namespace, args: argparse.Namespace) -> tuple[float, float]:
    """(end-to-end, compute-only) images/s of `train_accelerate.main`, measured step by step in the same run.

    Its `training_step` is wrapped: after each real step, the same step runs again on the same batch, now already on
    the device (the ceiling), and is timed apart. End to end per step is the time from the end of one real step to
    the end of the next, less the ceiling step between them: loading, copying, cropping, the loop's logging and the
    step. Pairing the two step by step keeps a shared machine's drifting load out of their ratio.
    """
    marks: list[float] = []
    ceilings: list[float] = []
    device = torch.device("cpu" if options.device == "cpu" else "cuda")

    def read(logs: dict[str, torch.Tensor]) -> None:
        {key: value.item() for key, value in logs.items()}  # the loop reads the losses every step: the same sync
        sync(device)

    def paired_step(*step_args, **step_kwargs):
        logs = training_step(*step_args, **step_kwargs)
        read(logs)
        marks.append(time.perf_counter())
        read(training_step(*step_args, **step_kwargs))  # the ceiling: this batch is on the device already
        ceilings.append(time.perf_counter() - marks[-1])
        return logs

    original = train_accelerate.training_step
    train_accelerate.training_step = paired_step
    try:
        train_accelerate.main(args)
    finally:
        train_accelerate.training_step = original
    steps = range(options.warmup + 1, len(marks))
    loop = statistics.median(marks[i] - marks[i - 1] - ceilings[i - 1] for i in steps)
    ceiling = statistics.median(ceilings[i] for i in steps)
    return options.batch_size / loop, options.batch_size / ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train (cpu)")
    parser.add_argument("--preset", default="bundled", help="generator preset of train_accelerate.py (bundled)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per measurement (15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--batch_size", type=int, default=8, help="--train_batch_size (8)")
    parser.add_argument("--resolution", type=int, default=64, help="--resolution (64)")
    parser.add_argument("--rows", type=int, default=64, help="pairs in the synthetic dataset (64: several epochs)")
    parser.add_argument("--source_side", type=int, default=None, help="longer side of the pairs (4 × --resolution)")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"], help="(no)")
    parser.add_argument("--channels_last", action="store_true", help="pass --channels_last")
    parser.add_argument("--compile", action="store_true", help="pass --compile")
    parser.add_argument("--num_workers", type=int, default=None, help="--dataloader_num_workers (the script's default)")
    parser.add_argument("--before", action=argparse.BooleanOptionalAction, default=True, help="also time the old path")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (3)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    options = parser.parse_args()
    if options.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if options.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    logging.disable(logging.WARNING)
    datasets.disable_progress_bars()

    with tempfile.TemporaryDirectory() as folder:
        data = synthetic_pairs(Path(folder) / "pairs", options.rows, options.source_side or 4 * options.resolution)
        args = script_args(options, data, Path(folder) / "out")
        before = script_args(options, data, Path(folder) / "before", "--no-decode_cache", "--dataloader_num_workers", 0)
        quiet = contextlib.redirect_stderr(io.StringIO()) if options.json else contextlib.nullcontext()
        rounds: dict[str, list[float]] = {}
        with quiet:
            for _ in range(options.rounds):  # interleaved: a shared machine's load shifts all measurements alike
                measured = {"data_only_img_s": data_only(options, args)}
                measured["end_to_end_img_s"], measured["compute_only_img_s"] = end_to_end(options, args)
                measured["end_to_end_over_compute"] = measured["end_to_end_img_s"] / measured["compute_only_img_s"]
                if options.before:
                    measured["data_only_before_img_s"] = data_only(options, before)
                    loop, ceiling = end_to_end(options, before)
                    measured["end_to_end_before_img_s"], measured["compute_only_before_img_s"] = loop, ceiling
                    measured["end_to_end_before_over_compute"] = loop / ceiling
                for key, value in measured.items():
                    rounds.setdefault(key, []).append(value)
    result = {key: float(f"{statistics.median(values):.3g}") for key, values in rounds.items()}
    result["rounds"] = {key: [float(f"{value:.3g}") for value in values] for key, values in rounds.items()}
    for key in ("device", "preset", "batch_size", "resolution", "steps", "rows", "mixed_precision", "channels_last"):
        result[key] = getattr(options, key)
    result["source_side"] = options.source_side or 4 * options.resolution
    result["num_workers"] = args.dataloader_num_workers  # None: the script's default
    result["torch"] = torch.__version__
    if not options.json:
        print(f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
