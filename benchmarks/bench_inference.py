"""Inference benchmark: end-to-end `Cartoonizer` latency (PIL in → PIL out) and peak memory.

Compares, in one run, the model under test (the bundled model, or ``--model``) with the reference pix2pix
``unet_256`` architecture (ngf=64, BatchNorm), in float32 and bfloat16, and the model under test on onnxruntime (its
``model.onnx``, exported and cached if it has none; skipped without the ``onnx`` extra): median latency at 256², 512²,
1024² and 3840×2160 (tiled automatically where one pass would need more than 1 GiB, `Cartoonizer.auto_tile_bytes`), and
each configuration's peak RSS on the 4K photo in 1024² tiles (and the model's in one pass), measured in a fresh
subprocess each, so peaks don't mask each other. Ratios are what to read on a noisy machine; absolute times drift.

    python benchmarks/bench_inference.py                 # prints a Markdown section for BENCHMARKS.md
    python benchmarks/bench_inference.py --model DIR --repeats 9 --device cuda
    python benchmarks/bench_inference.py --sizes 512 --repeats 21   # one size, no memory runs: a quick comparison
    python benchmarks/bench_inference.py --only batching --device cuda   # batch of 16 vs one at a time, side by side

``--only batching`` times 16 photos of 256² per image, interleaved: the previous path (float tensors made on the CPU,
one image per pass), the `Cartoonizer` one image per call, the `Cartoonizer` with ``batch_size=16`` (PIL in and out,
uint8 to and from the device), and `Cartoonizer.generate_uint8` on a (16, 256, 256, 3) uint8 array (no PIL).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date

import numpy as np
import torch
from PIL import Image

from ghibligan import Cartoonizer, UNetGenerator
from ghibligan.pipeline import bundled_model_path

UHD = (3840, 2160)
# Stand-in for the bundled model until one ships: the fast U-Net its card targets (speed doesn't depend on weights).
CANDIDATE = {"ngf": 16, "num_downs": 8, "norm": "batch"}


def build(name: str, model: str | None, device: str, dtype: str) -> Cartoonizer:
    if dtype == "onnxruntime":  # the model under test, exported (ghibligan.onnx_export), run by onnxruntime in fp32
        pipe = Cartoonizer.from_pretrained(model or bundled_model_path(), device=device, backend="onnxruntime")
    elif name == "unet_256":
        pipe = Cartoonizer(UNetGenerator(), device=device, dtype=dtype)
    elif model is not None:
        pipe = Cartoonizer.from_pretrained(model, device=device, dtype=dtype)
    else:
        try:
            pipe = Cartoonizer.from_pretrained(bundled_model_path(), device=device, dtype=dtype)
        except FileNotFoundError:
            pipe = Cartoonizer(UNetGenerator(**CANDIDATE), device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def photo(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 31 + y / 17)], -1)
    base += 0.03 * rng.standard_normal(base.shape, dtype=np.float32)
    return Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))


def rss_mb(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process, from /proc (Linux).

    ru_maxrss is the fallback elsewhere; on Linux it would also count the parent's pages that a forked child briefly
    shared, since it survives exec. VmHWM belongs to the address space, which exec replaces.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak measures only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child_peak_memory(args: argparse.Namespace) -> None:
    """Run one 4K cartoonization and print this process's peak RSS (and CUDA peak) as JSON."""
    pipe = build(args.child, args.model, args.device, args.dtype)
    image = photo(*UHD)
    reset_peak_rss()
    baseline = rss_mb("VmRSS")
    start = time.perf_counter()
    pipe(image, tile=0 if args.untiled else 1024)
    sync(args.device)
    seconds = time.perf_counter() - start
    cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    print(
        json.dumps(
            {"baseline_mb": baseline, "peak_rss_mb": rss_mb("VmHWM"), "cuda_peak_mb": cuda_mb, "seconds": seconds}
        )
    )


@torch.inference_mode()
def previous_path(pipe: Cartoonizer, image: Image.Image) -> np.ndarray:
    """The path before batched uint8 inference: a float tensor made on the CPU, moved, one image per pass."""
    from ghibligan.image_io import pil_to_tensor, tensor_to_uint8

    batch = pil_to_tensor(image)[None].to(pipe.device, pipe.dtype).contiguous(memory_format=torch.channels_last)
    return tensor_to_uint8(pipe.generator(batch).float().cpu()[0])


def batching(args: argparse.Namespace) -> None:
    """Per-image time of 16 photos of 256²: one at a time against batches of 16, interleaved repeats (medians)."""
    count, side = 16, 256
    images = [photo(side, side) for _ in range(count)]
    arrays = np.stack([np.asarray(image) for image in images])  # (16, 256, 256, 3) uint8
    print(
        f"### Batched inference — {date.today()} — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, device {args.device}\n"
    )
    print(
        f"Command: `python benchmarks/bench_inference.py --only batching --repeats {args.repeats}"
        f"{' --device ' + args.device if args.device != 'cpu' else ''}`\n"
    )
    print(f"ms per image, {count} photos of {side}², median of {args.repeats} interleaved repeats:\n")
    print(
        "| model, dtype | previous path, 1 per pass | `pipe(image)` × 16 | `pipe(images, batch_size=16)` | "
        "`generate_uint8`, batch 16 | batch 16 / one at a time |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("model", "unet_256"):
        for dtype in ("float32", "bfloat16") if args.device != "cpu" or "bf16" in args.dtypes else ("float32",):
            pipe = build(name, args.model, args.device, dtype)
            runs = {
                "previous": lambda pipe=pipe: [previous_path(pipe, image) for image in images],
                "single": lambda pipe=pipe: [pipe(image) for image in images],
                "batched": lambda pipe=pipe: pipe(images, batch_size=count),
                "uint8": lambda pipe=pipe: pipe.generate_uint8(arrays, batch_size=count),
            }
            times: dict[str, list[float]] = {key: [] for key in runs}
            for run in runs.values():  # warm-up
                run()
            for _ in range(args.repeats):
                for key, run in runs.items():
                    sync(args.device)
                    start = time.perf_counter()
                    run()
                    sync(args.device)
                    times[key].append((time.perf_counter() - start) / count * 1000)
            ms = {key: statistics.median(values) for key, values in times.items()}
            print(
                f"| {name}, {dtype} | {ms['previous']:.2f} | {ms['single']:.2f} | {ms['batched']:.2f} | "
                f"{ms['uint8']:.2f} | {ms['batched'] / ms['single']:.2f}× |",
                flush=True,
            )


def describe(pipe: Cartoonizer) -> str:
    config = getattr(pipe.generator, "config", {}) or {}
    params = sum(p.numel() for p in pipe.generator.parameters()) / 1e6
    keys = ("ngf", "num_downs", "norm", "attention_heads", "upsample", "residual", "tone_head_channels", "n_blocks")
    arguments = ", ".join(f"{k}={config[k]}" for k in keys if k in config)
    return f"{type(pipe.generator).__name__}({arguments}), {params:.2f} M params"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint to test (default: the bundled model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per size (median reported)")
    parser.add_argument(
        "--sizes", default="256,512,1024,4k", help="square sides and/or 4k, comma-separated (256,512,1024,4k)"
    )
    parser.add_argument("--only", default=None, choices=["batching"], help="run only this part (batching)")
    parser.add_argument("--dtypes", default="fp32", help="--only batching on CPU: fp32, or fp32,bf16 (emulated: slow)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--untiled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_peak_memory(args)
    if args.only == "batching":
        return batching(args)

    names = ["model", "unet_256"]
    dtypes = ["float32", "bfloat16"]
    configs = [(n, d) for n in names for d in dtypes]
    if importlib.util.find_spec("onnxruntime") is not None:
        configs.append(("model", "onnxruntime"))
    pipes = {(n, d): build(n, args.model, args.device, d) for n, d in configs}
    latency: dict[tuple[str, str, str], float] = {}
    chosen = [UHD if side == "4k" else (int(side), int(side)) for side in args.sizes.split(",")]
    for width, height in chosen:
        image = photo(width, height)
        repeats = args.repeats if width <= 512 else max(1, args.repeats // 3) if width <= 1024 else 1
        times: dict[tuple[str, str], list[float]] = {key: [] for key in pipes}
        if width <= 1024:
            for pipe in pipes.values():  # warm-up
                pipe(image)
        for _ in range(repeats):
            for key, pipe in pipes.items():  # interleaved, so drift hits every configuration alike
                sync(args.device)
                start = time.perf_counter()
                pipe(image)
                sync(args.device)
                times[key].append(time.perf_counter() - start)
        for key, values in times.items():
            latency[(*key, f"{width}×{height}")] = statistics.median(values) * 1000
        print(f"done {width}×{height}", file=sys.stderr)

    memory = {}
    runs = [(name, dtype, False) for name, dtype in configs] + [("model", "float32", True)]
    for name, dtype, untiled in runs if UHD in chosen else []:
        command = [sys.executable, __file__, "--child", name, "--dtype", dtype, "--device", args.device]
        command += (["--model", args.model] if args.model else []) + (["--untiled"] if untiled else [])
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        memory[f"{name} {dtype} {'untiled' if untiled else 'tiled'}"] = json.loads(result.stdout)

    sizes = [f"{w}×{h}" for w, h in chosen]
    print(
        f"### Inference — {date.today()} — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, device {args.device}\n"
    )
    print(
        f"Command: `python benchmarks/bench_inference.py{' --model ' + args.model if args.model else ''}"
        f"{' --device ' + args.device if args.device != 'cpu' else ''} --repeats {args.repeats}"
        f"{' --sizes ' + args.sizes if args.sizes != parser.get_default('sizes') else ''}`\n"
    )
    print(f"- model: {describe(pipes[('model', 'float32')])}")
    print(f"- unet_256: {describe(pipes[('unet_256', 'float32')])}\n")
    ort = ("model", "onnxruntime") in pipes
    print("Median end-to-end latency in ms (PIL in → PIL out; 3840×2160 tiled only above 1 GiB, one run):\n")
    print(
        "| size | model fp32 | model bf16 |"
        + (" model onnxruntime |" if ort else "")
        + " unet_256 fp32 | unet_256 bf16 | unet_256 fp32 / model fp32 | unet_256 fp32 / model bf16 |"
        + (" model fp32 / model onnxruntime |" if ort else "")
    )
    print("|---|---|---|" + ("---|" if ort else "") + "---|---|---|---|" + ("---|" if ort else ""))
    for size in sizes:
        m32, m16 = latency[("model", "float32", size)], latency[("model", "bfloat16", size)]
        r32, r16 = latency[("unet_256", "float32", size)], latency[("unet_256", "bfloat16", size)]
        mort = latency.get(("model", "onnxruntime", size))
        print(
            f"| {size} | {m32:.1f} | {m16:.1f} |"
            + (f" {mort:.1f} |" if ort else "")
            + f" {r32:.1f} | {r16:.1f} | {r32 / m32:.1f}× | {r32 / m16:.1f}× |"
            + (f" {m32 / mort:.2f}× |" if ort else "")
        )
    if not memory:
        return
    print("\nPeak memory cartoonizing one 3840×2160 photo, fresh process each (baseline: RSS with torch, the model")
    print("and the decoded photo loaded, before the call):\n")
    print("| configuration | baseline RSS (MB) | peak RSS (MB) | added by the call (MB) | CUDA peak (MB) | seconds |")
    print("|---|---|---|---|---|---|")
    for label, result in memory.items():
        cuda = f"{result['cuda_peak_mb']:.0f}" if result["cuda_peak_mb"] is not None else "–"
        added = result["peak_rss_mb"] - result["baseline_mb"]
        print(
            f"| {label} | {result['baseline_mb']:.0f} | {result['peak_rss_mb']:.0f} | {added:.0f} | {cuda} | "
            f"{result['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
