"""Teacher benchmark: how abstract each classical teacher is (structure metrics) and how fast, on a folder of photos.

For every photo, at the size make-pairs uses (``--max_side 512``), the photo and each teacher's output are measured with
`ghibligan.metrics`: flat share, gradient energy relative to the photo, palette size (5 bits per channel). Means are
reported for the held-out photos (the validation split of ``--validation_fraction``, as `make-pairs` assigns it) and
for all photos. Speed: median seconds per photo downscaled to 1024 px, teachers interleaved photo by photo so load
from other processes hits them alike.

    python benchmarks/bench_teachers.py ../shared/photos          # prints a Markdown section for BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

import cv2
import numpy as np

from ghibligan.image_io import load_image, resize_to_max_side
from ghibligan.metrics import flat_share, gradient_energy, palette_size
from ghibligan.pairs import photos_from_folder, split_of
from ghibligan.teachers import make_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", help="folder of photos")
    parser.add_argument("--teachers", nargs="+", default=["toon:toon", "toon:painterly", "toon:ghibli"])
    parser.add_argument("--max_side", type=int, default=512, help="size the metrics are taken at (make-pairs' 512)")
    parser.add_argument("--validation_fraction", type=float, default=0.12, help="held-out share, as in make-pairs")
    parser.add_argument("--timing_side", type=int, default=1024, help="photo size for the timing (1024)")
    parser.add_argument("--threads", type=int, default=2, help="OpenCV threads (2)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)

    teachers = {spec: make_teacher(spec) for spec in args.teachers}
    rows: dict[str, list[dict]] = {name: [] for name in ["photo", *teachers]}
    held_out: list[bool] = []
    seconds: dict[str, list[float]] = {spec: [] for spec in teachers}
    for key, path in photos_from_folder(args.photos):
        image = load_image(path).rgb
        photo = np.asarray(resize_to_max_side(image, args.max_side))
        held_out.append(split_of(key, args.validation_fraction) == "validation")
        energy = gradient_energy(photo)
        rows["photo"].append({"flat": flat_share(photo), "energy": 1.0, "palette": palette_size(photo)})
        for spec, teacher in teachers.items():
            out = np.asarray(teacher(photo))
            rows[spec].append(
                {"flat": flat_share(out), "energy": gradient_energy(out) / energy, "palette": palette_size(out)}
            )
        large = resize_to_max_side(image, args.timing_side)
        for spec, teacher in teachers.items():
            start = time.perf_counter()
            teacher(large)
            seconds[spec].append(time.perf_counter() - start)

    def mean(name: str, key: str, subset: bool) -> float:
        return statistics.mean(r[key] for r, v in zip(rows[name], held_out, strict=True) if v or not subset)

    print(f"## Teachers — {date.today()} — {platform.machine()}, {args.threads} OpenCV threads\n")
    command = f"python benchmarks/bench_teachers.py {args.photos}"
    print(f"Command: `{command}` ({len(held_out)} photos, {sum(held_out)} held out)\n")
    print("| | held-out flat share | held-out gradient energy vs photo | held-out palette | all: flat share | "
          f"all: gradient energy | all: palette | s per {args.timing_side}-px photo (median, max) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in rows:
        timing = f"{statistics.median(seconds[name]):.2f} ({max(seconds[name]):.2f})" if name in seconds else "–"
        cells = [f"{mean(name, k, s):.3f}" if k != "palette" else f"{mean(name, k, s):.0f}"
                 for s in (True, False) for k in ("flat", "energy", "palette")]  # fmt: skip
        print(f"| {name} | {' | '.join(cells)} | {timing} |")
    worst = min(r["flat"] for r in rows[args.teachers[-1]])
    print(f"\nLowest flat share of {args.teachers[-1]} on any photo: {worst:.3f}")


if __name__ == "__main__":
    main()
