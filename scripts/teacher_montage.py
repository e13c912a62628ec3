"""Render the toon teacher's presets on photos into one montage image (photo | preset 1 | preset 2 ...).

python scripts/teacher_montage.py space/examples/*.jpg -o docs/teacher_montage.jpg
python scripts/teacher_montage.py space/examples/*.jpg -o docs/ghibli_montage.jpg --presets ghibli --cell 512
python scripts/teacher_montage.py space/examples/*.jpg -o docs/styles_montage.jpg --presets --model bundled

A model with styles gets one column per style (``--styles`` picks them; default: all of the model's); with
``--posterize S``, each style also gets a column at that posterizer strength (the Space's "Crisp levels" is 1):

python scripts/teacher_montage.py space/examples/*.jpg -o docs/crisp_montage.jpg --presets --model bundled \
    --styles ghibli toon --posterize 1 --max-side 512
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time

import numpy as np
from PIL import Image, ImageDraw

from ghibligan import Cartoonizer
from ghibligan.image_io import load_image, resize_to_max_side
from ghibligan.teachers import PRESETS, ToonTeacher


def render_model(model: Cartoonizer, photo: Image.Image, style: str | None, posterize: float | None) -> Image.Image:
    return model(photo, style=style, posterize=posterize)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", help="photo files")
    parser.add_argument("-o", "--output", required=True, help="montage image to write")
    parser.add_argument("--cell", type=int, default=320, help="width of each cell in pixels (320)")
    parser.add_argument("--presets", nargs="*", default=["toon", "painterly", "ghibli"], choices=sorted(PRESETS))
    parser.add_argument("--styles", nargs="+", default=None, help="the model's styles to show (default: all)")
    parser.add_argument("--model", default=None, help="also a generator: 'bundled', a folder or a Hub id")
    parser.add_argument("--max-side", type=int, default=1024, help="photos are downscaled to this (1024)")
    parser.add_argument(
        "--posterize", type=float, default=None, help="also each style at this posterizer strength in [0, 1]"
    )
    args = parser.parse_args()

    columns = [(teacher.name, teacher) for teacher in map(ToonTeacher, args.presets)]
    if args.model:
        model = Cartoonizer.from_pretrained(None if args.model == "bundled" else args.model, device="cpu")
        model.set_progress_bar_config(disable=True)
        model.check_posterize(args.posterize)
        strengths = [None] if args.posterize is None else [None, args.posterize]  # None: the learned strength
        for style, posterize in itertools.product(args.styles or model.styles or [None], strengths):
            label = f"model: {args.model}" + (f", {style}" if style else "")
            label += "" if posterize is None else f", posterize={posterize:g}"
            columns.append((label, functools.partial(render_model, model, style=style, posterize=posterize)))
    rows = []
    for path in args.photos:
        photo = resize_to_max_side(load_image(path).rgb, args.max_side)
        cells = [photo]
        for label, render in columns:
            start = time.perf_counter()
            cells.append(render(photo))
            print(f"{path} {label}: {(time.perf_counter() - start) * 1000:.0f} ms at {photo.size}")
        height = round(args.cell * photo.height / photo.width)
        rows.append(
            np.concatenate([np.asarray(c.resize((args.cell, height), Image.Resampling.LANCZOS)) for c in cells], 1)
        )
    width = rows[0].shape[1]
    header = Image.new("RGB", (width, 24), "white")
    draw = ImageDraw.Draw(header)
    for i, label in enumerate(["photo", *[label for label, _ in columns]]):
        draw.text((i * args.cell + 8, 6), label, fill="black")
    montage = np.concatenate([np.asarray(header), *rows], 0)
    Image.fromarray(montage).save(args.output, quality=88)
    print(f"wrote {args.output} ({montage.shape[1]}x{montage.shape[0]})")


if __name__ == "__main__":
    main()
