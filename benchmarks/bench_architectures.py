"""Latency of candidate generator architectures for the bundled model, side by side in one interleaved run.

End to end through `Cartoonizer` (PIL in → PIL out) at one size, fp32 and bf16, random weights (speed does not depend
on them). Used to choose the bundled model's width and upsampling within the 30 ms budget at 512².

    python benchmarks/bench_architectures.py                # 512², 9 rounds
    python benchmarks/bench_architectures.py --size 1024 --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import numpy as np
import torch
from PIL import Image

from ghibligan import Cartoonizer, UNetGenerator

CANDIDATES = {
    "ngf=16 transpose (previous bundled)": {"ngf": 16, "residual": True},
    "ngf=16 resize": {"ngf": 16, "residual": True, "upsample": "resize"},
    "ngf=24 transpose": {"ngf": 24, "residual": True},
    "ngf=24 resize": {"ngf": 24, "residual": True, "upsample": "resize"},
    "ngf=16 transpose + attention(8) + 5×5 innermost": {
        "ngf": 16, "residual": True, "attention_heads": 8, "innermost_kernel": 5,
    },
    "ngf=32 transpose": {"ngf": 32, "residual": True},
    "ngf=16 transpose + tone_head_channels=16": {"ngf": 16, "residual": True, "tone_head_channels": 16},
    "ngf=16 transpose + tone_head_channels=32": {"ngf": 16, "residual": True, "tone_head_channels": 32},
    "ngf=16, 5 levels": {"ngf": 16, "residual": True, "num_downs": 5},
    "ngf=16, 5 levels + tone_head_channels=16": {"ngf": 16, "residual": True, "num_downs": 5, "tone_head_channels": 16},
    "ngf=16, 5 levels + tone_head_channels=32 (bundled)": {
        "ngf": 16, "residual": True, "num_downs": 5, "tone_head_channels": 32,
    },
    "ngf=16, 4 levels + tone_head_channels=16": {"ngf": 16, "residual": True, "num_downs": 4, "tone_head_channels": 16},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square photo side (512)")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds; each runs every configuration once (9)")
    args = parser.parse_args()

    photo = Image.fromarray((np.random.default_rng(0).random((args.size, args.size, 3)) * 255).astype(np.uint8))
    pipes = {}
    for name, config in CANDIDATES.items():
        for dtype in ("float32", "bfloat16"):
            torch.manual_seed(0)
            generator = UNetGenerator(**{"num_downs": 8, "norm": "batch", "dropout": 0.0, **config})
            pipe = Cartoonizer(generator, device="cpu", dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
            pipes[name, dtype] = pipe
    for pipe in pipes.values():  # warm-up
        pipe(photo)
    times: dict = {key: [] for key in pipes}
    for _ in range(args.rounds):
        for key, pipe in pipes.items():
            start = time.perf_counter()
            pipe(photo)
            times[key].append(time.perf_counter() - start)

    print(
        f"## Architectures — {date.today()} — {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}\n"
    )
    print(f"Command: `python benchmarks/bench_architectures.py --size {args.size} --rounds {args.rounds}`\n")
    size = f"{args.size}²"
    print(f"| residual U-Net, BN (8 levels unless named) | params (M) | {size} fp32 (ms) | {size} bf16 (ms) |")
    print("|---|---|---|---|")
    for name in CANDIDATES:
        params = sum(p.numel() for p in pipes[name, "float32"].generator.parameters()) / 1e6
        fp32, bf16 = (statistics.median(times[name, d]) * 1e3 for d in ("float32", "bfloat16"))
        print(f"| {name} | {params:.2f} | {fp32:.1f} | {bf16:.1f} |")


if __name__ == "__main__":
    main()
