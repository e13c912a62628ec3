"""Cost of `toon`'s pipeline stages: the contour lines (`ghibligan.contour_lines`) and the edge-aware upsampling from
the work side (`ghibligan.upsampling`). The bundled model's `toon` with and without its lines and with bilinear
upsampling, the line stage alone, the pipeline's against the teacher's (OpenCV's guided filters), and the joint
bilateral upsampling of a 512-px cartoon against OpenCV's bilinear resize, interleaved in one run.

For each size (512², 1024², 3840×2160; photo-like images from ``bench_inference.photo``) the minimum time of
``Cartoonizer(image, style="toon")`` with its defaults (``dtype="auto"``, drawn at 512 px and upsampled on larger
photos, the lines found at the photo's size up to `MAX_LINE_SIDE`) and with ``contour_lines=False``; then
`draw_contour_lines` fast and with OpenCV's guided filters (``fast=False``, what the teacher runs; it thins with the
fast kernel too, which gives OpenCV's skeleton bit for bit), the thinning alone, fast and OpenCV's, on the same
photo's edge band, and the upsampling of the photo's 512-px cartoon to its size (none at 512²). The minimum, not the
median: a shared machine only ever adds time.

    python benchmarks/bench_contour_lines.py --repeats 9     # prints a Markdown table for BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import platform
from datetime import date

import cv2
import numpy as np
import torch
from bench_inference import photo  # the same deterministic photo-like image (benchmarks/ is on sys.path)
from bench_student import min_ms  # the minimum of repeated calls after a warm-up

from ghibligan import Cartoonizer
from ghibligan.contour_lines import ContourLines, draw_contour_lines, scaled_size, smooth_surface, thin
from ghibligan.image_io import resize_to_max_side
from ghibligan.upsampling import DEFAULT_UPSAMPLING_SIGMA, joint_bilateral_upsample

SIZES = [(512, 512), (1024, 1024), (3840, 2160)]
TEACHER = "lines, teacher's"


def edge_band(rgb: np.ndarray, lines: ContourLines) -> np.ndarray:
    """The thresholded edge band the line stage thins, for timing the thinning alone."""
    smoothed = smooth_surface(rgb, lines.smooth_radius, lines.smooth_eps, lines.bilateral_passes)
    gray = cv2.cvtColor(smoothed, cv2.COLOR_RGB2GRAY)
    gray = cv2.ximgproc.guidedFilter(gray, gray, scaled_size(8, rgb), (0.08 * 255) ** 2).astype(np.float32) / 255
    gray = cv2.GaussianBlur(gray, (0, 0), sigmaX=max(1.0, scaled_size(1, rgb)))
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return (magnitude > lines.line_threshold).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per configuration (minimum reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenCV CPU threads (2, the target machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    pipe = Cartoonizer.from_pretrained()  # the defaults a user gets
    pipe.set_progress_bar_config(disable=True)
    lines = pipe.line_settings("toon") or ContourLines()
    rows = []
    for width, height in SIZES:
        image = photo(width, height)
        rgb = np.asarray(image)
        band = edge_band(rgb, lines)
        repeats = args.repeats if width < 2000 else max(1, args.repeats // 3)
        cartoon = np.asarray(pipe(resize_to_max_side(image, 512), style="toon", contour_lines=False)[0])
        guide_low = cv2.resize(rgb, (cartoon.shape[1], cartoon.shape[0]), interpolation=cv2.INTER_AREA)
        sigma = pipe.upsampling_sigma("toon") or DEFAULT_UPSAMPLING_SIGMA
        upsampled = cartoon.shape != rgb.shape
        row = {
            "toon": min_ms(lambda image=image: pipe(image, style="toon"), repeats),
            "toon, no lines": min_ms(lambda image=image: pipe(image, style="toon", contour_lines=False), repeats),
            "toon, bilinear": min_ms(lambda image=image: pipe(image, style="toon", joint_upsampling=False), repeats),
            "lines": min_ms(lambda rgb=rgb: draw_contour_lines(rgb, lines), repeats),
            TEACHER: min_ms(lambda rgb=rgb: draw_contour_lines(rgb, lines, fast=False), max(1, repeats // 3)),
            "lines, teacher's, full size": min_ms(
                lambda rgb=rgb: draw_contour_lines(rgb, lines, fast=False, max_side=None), 1
            ),
            "thinning": min_ms(lambda band=band: thin(band), repeats),
            "thinning, OpenCV": min_ms(lambda band=band: thin(band, fast=False), max(1, repeats // 3)),
            "joint upsampling": min_ms(
                lambda c=cartoon, g=guide_low, rgb=rgb, s=sigma: joint_bilateral_upsample(c, g, rgb, s), repeats
            )
            if upsampled
            else float("nan"),
            "bilinear upsampling": min_ms(
                lambda c=cartoon, size=image.size: cv2.resize(c, size, interpolation=cv2.INTER_LINEAR), repeats
            )
            if upsampled
            else float("nan"),
        }
        rows.append((f"{width}×{height}", row))
        print(f"{width}×{height}", {k: round(v, 1) for k, v in row.items()}, flush=True)

    machine = f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    print(f"\n## Contour lines — {date.today()} — {machine}\n")
    print(f"Command: `python benchmarks/bench_contour_lines.py --repeats {args.repeats} --threads {args.threads}`\n")
    keys = list(rows[0][1])
    print("| size | " + " | ".join(f"{key} (ms)" for key in keys) + " | lines / teacher's | thinning / OpenCV's |")
    print("|---" * (len(keys) + 3) + "|")
    for size, row in rows:
        cells = " | ".join("–" if np.isnan(row[key]) else f"{row[key]:.1f}" for key in keys)
        print(
            f"| {size} | {cells} | {row['lines'] / row[TEACHER]:.2f}× | "
            f"{row['thinning'] / row['thinning, OpenCV']:.2f}× |"
        )


if __name__ == "__main__":
    main()
