"""Latency of the bundled three-style model beside the earlier bundled U-Net and the reference pix2pix ``unet_256``.

For each model and precision, in one interleaved run (so a shared machine's load hits all alike): the minimum time of
the bare ``model(x)`` forward on a (1, 3, H, W) tensor, and of PIL in → PIL out (tensor conversion included, one pass,
no tiling), at 512², 1024² and 3840×2160; and, for the bundled model, the product path ``Cartoonizer(image)``
with its defaults (``dtype="auto"``; 1024² tiles only where one pass would need over 1 GiB, so the bundled model runs
3840×2160 in one pass; its default style, ``ghibli``, is drawn at 512 px and upsampled on larger photos, the model's
``work_sides``), and the same at the photo's own size (``work_side=0``, as ``painterly`` is drawn). The bundled
model and the Cartoonizer are also timed with their fused CPU kernels off (`ghibligan.models.cpu_kernels.disabled()`,
the torch path), for the kernels' A/B in the same run. bf16 is measured
only where the CPU computes it natively (elsewhere PyTorch emulates it, slower than fp32). The minimum, not the
median: on a shared machine other processes only ever add time, so the minimum is the least noisy estimate. Read the
ratios.

    python benchmarks/bench_student.py                       # prints a Markdown table for BENCHMARKS.md
    python benchmarks/bench_student.py --repeats 9 --student '{"scale_factor": 4}'   # + a variant of the guided preset
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import date

import torch
from bench_inference import photo  # the same deterministic photo-like image (benchmarks/ is on sys.path)
from PIL import Image

from ghibligan import Cartoonizer, UNetGenerator
from ghibligan.image_io import pil_to_tensor, tensor_to_uint8
from ghibligan.models import cpu_kernels
from ghibligan.models.auto import load_generator
from ghibligan.models.presets import build_generator
from ghibligan.pipeline import bundled_model_path, has_native_bf16_cpu

SIZES = [(512, 512), (1024, 1024), (3840, 2160)]


def prepare(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return model.eval().to(dtype=dtype, memory_format=torch.channels_last)


def forward_fn(model: torch.nn.Module, image: Image.Image, dtype: torch.dtype) -> Callable[[], object]:
    sample = pil_to_tensor(image)[None].to(dtype).contiguous(memory_format=torch.channels_last)
    return lambda: model(sample)


def end_to_end_fn(model: torch.nn.Module, image: Image.Image, dtype: torch.dtype) -> Callable[[], object]:
    def run() -> Image.Image:
        sample = pil_to_tensor(image)[None].to(dtype).contiguous(memory_format=torch.channels_last)
        return Image.fromarray(tensor_to_uint8(model(sample)[0]))

    return run


@torch.inference_mode()
def min_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per configuration (minimum reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (2, the target machine)")
    parser.add_argument("--student", default=None, help="also time the guided preset with these kwargs (JSON)")
    parser.add_argument("--skip_unet256_4k", action="store_true", help="unet_256 on 3840×2160 takes ~10 s a call")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = {
        "bundled": load_generator(bundled_model_path()),
        "toon-painterly-unet": load_generator(bundled_model_path("toon-painterly-unet")),
        "unet_256": UNetGenerator(),
    }
    if args.student:
        models["student"] = build_generator("guided", **json.loads(args.student))
    pipe = Cartoonizer.from_pretrained()  # the defaults a user gets: dtype="auto"
    pipe.set_progress_bar_config(disable=True)
    dtypes = [torch.float32] + ([torch.bfloat16] if has_native_bf16_cpu() else [])
    rows = []
    for width, height in SIZES:
        image = photo(width, height)
        for dtype in dtypes:
            row = {"size": f"{width}×{height}", "dtype": str(dtype).removeprefix("torch.")}
            for name, model in models.items():
                if name == "unet_256" and width > 2000 and args.skip_unet256_4k:
                    continue
                model = prepare(model, dtype)
                repeats = args.repeats if width < 2000 else max(1, args.repeats // 3)
                row[f"{name} forward"] = min_ms(forward_fn(model, image, dtype), repeats)
                row[f"{name} e2e"] = min_ms(end_to_end_fn(model, image, dtype), repeats)
                if name == "bundled" and cpu_kernels.available():  # A/B: the same model without the fused kernels
                    with cpu_kernels.disabled():
                        row["bundled torch-path e2e"] = min_ms(end_to_end_fn(model, image, dtype), repeats)
            if dtype == dtypes[0]:
                row["Cartoonizer auto"] = min_ms(lambda image=image: pipe(image), repeats)
                row["Cartoonizer full size"] = min_ms(lambda image=image: pipe(image, work_side=0), repeats)
                if cpu_kernels.available():
                    with cpu_kernels.disabled():
                        row["Cartoonizer torch path"] = min_ms(lambda image=image: pipe(image), repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)

    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    print(
        f"\n## Bundled model latency — {date.today()} — {platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, Cartoonizer dtype auto = {str(pipe.dtype).removeprefix('torch.')}\n"
    )
    print(f"Command: `python benchmarks/bench_student.py {' '.join(f'--{k} {v}' for k, v in vars(args).items())}`")
    print(", ".join(f"{name} {count / 1e6:.2f} M parameters" for name, count in params.items()) + "\n")
    names = list(models)
    print(
        "| size | dtype | bundled fwd (ms) | "
        + " | ".join(f"{name} PIL→PIL (ms)" for name in names)
        + " | bundled, torch path (ms) | Cartoonizer (ms) | Cartoonizer, full size (ms) | Cartoonizer, torch path (ms) "
        "| unet_256 fp32 / bundled |"
    )
    print("|---" * (len(names) + 8) + "|")
    fp32_unet = {r["size"]: r.get("unet_256 e2e") for r in rows if r["dtype"] == "float32"}
    for r in rows:
        ratio = fp32_unet[r["size"]] / r["bundled e2e"] if fp32_unet[r["size"]] else float("nan")
        cells = " | ".join("–" if r.get(f"{name} e2e") is None else f"{r[f'{name} e2e']:.1f}" for name in names)
        extra = " | ".join(
            "–" if r.get(key) is None else f"{r[key]:.1f}"
            for key in ("bundled torch-path e2e", "Cartoonizer auto", "Cartoonizer full size", "Cartoonizer torch path")
        )
        print(f"| {r['size']} | {r['dtype']} | {r['bundled forward']:.1f} | {cells} | {extra} | {ratio:.1f}× |")


if __name__ == "__main__":
    main()
