"""How closely a generator reproduces its teacher on held-out photos, and (optionally) export it for bundling.

For every row of a make-pairs split, the whole photo runs through `Cartoonizer` (no crops) and is compared with the
teacher's target: PSNR and SSIM of model→teacher (scikit-image), the photo's own PSNR to the teacher for scale, and the
share of the photo→teacher error the model removes, 1 - MSE(model, teacher) / MSE(photo, teacher). Dark photos (mean
luma < 0.3) are reported separately: the attention U-Net's authors saw blurred outputs on dark photos.

PSNR and SSIM are dominated by tone and hue, so they miss a model that grades colour but keeps the photo's texture.
Beside them come the structure metrics of `ghibligan.metrics` (flat share, gradient energy relative to the photo and
to the teacher, palette size at 5 bits per channel, ink-line F-score against the teacher within 1 px), with the
teacher's and the photo's own values for scale.

    python scripts/evaluate_fidelity.py --model runs/bundled/model --pairs runs/bundled/pairs --split validation
    python scripts/evaluate_fidelity.py ... --export ghibligan/pretrained/toon-painterly-unet --teacher toon:painterly
    python scripts/evaluate_fidelity.py ... --reference runs/bundled/reference-unet256   # a unet_256 beside it

A style-conditioned model (``styles`` in its config, e.g. ``--preset guided`` trained on several ``--target_column``
styles) is evaluated style by style, each against the pairs column named after the style (multi-teacher make-pairs
output); ``--teacher`` then names one teacher per style, in the model's order, for the card:

    python scripts/evaluate_fidelity.py --model runs/bundled-styles/model --pairs runs/bundled-styles/pairs \
        --teacher toon:ghibli toon:toon toon:painterly --export ghibligan/pretrained/ghibli-styles

``--reference`` evaluates a second checkpoint (the reference pix2pix unet_256 trained on the same pairs for the same
steps) on the same photos; with ``--export`` its numbers go into the card and metrics.json beside the model's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq

from ghibligan import Cartoonizer, load_generator
from ghibligan.metrics import flat_share, gradient_energy, palette_size, psnr, ssim, structure_metrics
from ghibligan.models.guided import MAX_SMOOTHING_NOISE, MAX_WORK_SIDE, MIN_WORK_SIDE, is_work_side
from ghibligan.onnx_export import export_onnx
from ghibligan.teachers import make_teacher
from ghibligan.upsampling import MAX_SIGMA, MIN_SIGMA, is_sigma


def pooled_psnr(mean_squared_error: float) -> float:
    """PSNR (dB, peak 255) of an MSE pooled over several images: 10 log10(255² / MSE)."""
    return float("inf") if mean_squared_error == 0 else 10 * math.log10(255**2 / mean_squared_error)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


STRUCTURE = ("flat_share", "gradient_energy_vs_photo", "gradient_energy_vs_teacher", "palette_size", "ink_f_score")


def evaluate(cartoonizer: Cartoonizer, rows, target_column: str = "target_image", style: str | None = None) -> dict:
    per_image = []
    for row in rows:
        photo, teacher = np.asarray(row["input_image"].convert("RGB")), np.asarray(row[target_column].convert("RGB"))
        output = np.asarray(cartoonizer(photo, style=style)[0])
        structure = structure_metrics(output, photo=photo, teacher=teacher)
        per_image.append(
            {
                "source": row["source"],
                "dark": bool(photo.mean() / 255 < 0.3),
                "mse_model": mse(output, teacher),
                "mse_photo": mse(photo, teacher),
                "psnr_model": psnr(output, teacher),
                "psnr_photo": psnr(photo, teacher),
                "ssim_model": ssim(output, teacher),
                "ssim_photo": ssim(photo, teacher),
                **{key: structure[key] for key in STRUCTURE},
                "teacher_flat_share": flat_share(teacher),
                "teacher_palette_size": palette_size(teacher),
                "teacher_gradient_energy_vs_photo": gradient_energy(teacher) / gradient_energy(photo),
                "photo_flat_share": flat_share(photo),
                "photo_palette_size": palette_size(photo),
            }
        )

    def summary(items):
        if not items:
            return None
        mse_model = statistics.mean(i["mse_model"] for i in items)
        mse_photo = statistics.mean(i["mse_photo"] for i in items)
        means = {
            key: statistics.mean(i[key] for i in items)
            for key in (*STRUCTURE, "teacher_flat_share", "teacher_palette_size", "teacher_gradient_energy_vs_photo",
                        "photo_flat_share", "photo_palette_size")
        }  # fmt: skip
        return {
            "images": len(items),
            "psnr_model": pooled_psnr(mse_model),
            "psnr_photo": pooled_psnr(mse_photo),
            "psnr_gain_db": pooled_psnr(mse_model) - pooled_psnr(mse_photo),
            "ssim_model": statistics.mean(i["ssim_model"] for i in items),
            "ssim_photo": statistics.mean(i["ssim_photo"] for i in items),
            "error_removed": 1 - mse_model / mse_photo,
            **means,
        }

    return {
        "all": summary(per_image),
        "dark": summary([i for i in per_image if i["dark"]]),
        "per_image": per_image,
    }


def report(name: str, metrics: dict) -> None:
    print(name)
    for split in ("all", "dark"):
        m = metrics[split]
        if m:
            print(
                f"{split:>4}: {m['images']} images | PSNR to teacher {m['psnr_model']:.2f} dB "
                f"(photo {m['psnr_photo']:.2f}, gain {m['psnr_gain_db']:+.2f} dB) | "
                f"SSIM {m['ssim_model']:.4f} (photo {m['ssim_photo']:.4f}) | "
                f"error removed {100 * m['error_removed']:.1f} %"
            )
            print(
                f"      structure: flat share {m['flat_share']:.3f} (teacher {m['teacher_flat_share']:.3f}, photo "
                f"{m['photo_flat_share']:.3f}) | gradient energy {m['gradient_energy_vs_photo']:.2f}x the photo's, "
                f"{m['gradient_energy_vs_teacher']:.2f}x the teacher's | palette {m['palette_size']:.0f} colours "
                f"(teacher {m['teacher_palette_size']:.0f}, photo {m['photo_palette_size']:.0f}) | "
                f"ink-line F-score {m['ink_f_score']:.3f}"
            )


def teacher_reproducibility(teacher_spec: str, rows, target_column: str, sigma: float, seed: int = 0) -> float:
    """The share of the photo→teacher error that the teacher itself removes when it gets the photo with Gaussian
    noise of ``sigma`` grey levels added (invisible at 0.5): 1 - MSE(teacher(noisy), teacher) / MSE(photo, teacher).

    A teacher whose output jumps with such noise (a graph segmentation's region borders) cannot be reproduced on new
    photos by any student: this is the most error removed one can expect, to read a student's score against."""
    from ghibligan.teachers import make_teacher

    teacher, generator = make_teacher(teacher_spec), np.random.default_rng(seed)
    errors, scales = [], []
    for row in rows:
        photo, target = np.asarray(row["input_image"].convert("RGB")), np.asarray(row[target_column].convert("RGB"))
        noisy = np.clip(photo + generator.normal(0, sigma, photo.shape) + 0.5, 0, 255).astype(np.uint8)
        errors.append(mse(np.asarray(teacher(noisy)), target))
        scales.append(mse(photo, target))
    return 1 - statistics.mean(errors) / statistics.mean(scales)


def report_reproducibility(teacher_spec: str, rows, target_column: str, sigma: float, label: str = "") -> float:
    """`teacher_reproducibility`, printed (``label``: the style, for a multi-style model)."""
    ceiling = teacher_reproducibility(teacher_spec, rows, target_column, sigma)
    print(f"{label}{teacher_spec} on the photo + noise σ {sigma:g}: {100 * ceiling:.1f} % removed")
    return ceiling


def unit_item(value: str, what: str, example: str) -> tuple[str, float]:
    """One ``STYLE=NUMBER`` value with the number in [0, 1], ``"toon=1"`` → ``("toon", 1.0)``; ``what`` names the
    number and ``example`` shows one in the error."""
    style, _, number = value.partition("=")
    try:
        parsed = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STYLE={what.upper()} such as {example}, got {value!r}") from None
    if not style or not 0 <= parsed <= 1:
        raise argparse.ArgumentTypeError(
            f"expected STYLE={what.upper()} with a {what} in [0, 1] such as {example}, got {value!r}"
        )
    return style, parsed


def strength_item(value: str) -> tuple[str, float]:
    """One ``--posterize`` or ``--despeckle`` value, ``"toon=1"`` → ``("toon", 1.0)``, the strength in [0, 1]
    (argparse's ``type``)."""
    return unit_item(value, "strength", "toon=1")


def exposure_item(value: str) -> tuple[str, float]:
    """One ``--exposure_target`` value, ``"ghibli=0.39"`` → ``("ghibli", 0.39)`` (argparse's ``type``; 0 removes the
    style's target)."""
    return unit_item(value, "target", "ghibli=0.39")


# the export-time strengths: flag → (the generator's module, what it is, the config key that builds it)
STRENGTHS = {
    "posterize": ("level_quantizer", "posterizer", "levels"),
    "despeckle": ("despeckle", "median", "despeckle"),
}


def side_item(value: str) -> tuple[str, int]:
    """One ``--work_side`` value, ``"ghibli=512"`` → ``("ghibli", 512)`` (argparse's ``type``)."""
    style, _, side = value.partition("=")
    if not style or not side.isdigit() or not is_work_side(int(side)):
        raise argparse.ArgumentTypeError(
            f"expected STYLE=SIDE, a side in [{MIN_WORK_SIDE}, {MAX_WORK_SIDE}] px such as ghibli=512, got {value!r}"
        )
    return style, int(side)


def sigma_item(value: str) -> tuple[str, float]:
    """One ``--joint_upsampling`` value, ``"toon=24"`` → ``("toon", 24.0)``, a range σ in grey levels (argparse's
    ``type``; 0 removes the style's)."""
    style, _, number = value.partition("=")
    try:
        sigma = float(number)
    except ValueError:
        sigma = -1.0
    if not style or not (sigma == 0 or is_sigma(sigma)):
        raise argparse.ArgumentTypeError(
            f"expected STYLE=SIGMA, a sigma in [{MIN_SIGMA:g}, {MAX_SIGMA:g}] grey levels (0: none) such as toon=24, "
            f"got {value!r}"
        )
    return style, sigma


def teacher_lines(parser: argparse.ArgumentParser, args) -> dict[str, dict]:
    """``--contour_lines STYLE ...``: each style's teacher's line settings (the teacher given for it in
    ``--teacher``, one per style in the model's order), for the model's ``contour_lines``."""
    if not args.contour_lines:
        return {}
    styles = json.loads((Path(args.model) / "config.json").read_text()).get("styles") or []
    if not args.teacher or len(args.teacher) != len(styles):
        parser.error(f"--contour_lines takes the styles' teachers' settings: give --teacher, one per style {styles}")
    settings = {}
    for style in args.contour_lines:
        if style not in styles:
            parser.error(f"--contour_lines: the model has no style {style!r} (styles {styles})")
        spec = args.teacher[styles.index(style)]
        config = getattr(make_teacher(spec), "config", None) if spec.startswith("toon") else None
        lines = config.contour_lines() if hasattr(config, "contour_lines") else None
        if lines is None:
            parser.error(f"--contour_lines: {style!r}'s teacher {spec} draws no contour lines")
        settings[style] = lines.to_dict()
    return settings


def load_styles_generator(
    model: str,
    strengths: dict[str, dict[str, float]] | None = None,
    work_sides: dict[str, int] | None = None,
    smoothing_noise: float | None = None,
    exposure_targets: dict[str, float] | None = None,
    contour_lines: dict[str, dict] | None = None,
    joint_upsampling: dict[str, float] | None = None,
    smoothing_reference_side: int | None = None,
):
    """A style-conditioned checkpoint with the export-time ``strengths`` set, ``{flag: {style: strength}}`` for the
    flags of `STRENGTHS` (e.g. ``{"posterize": {"toon": 1.0}}``), by their modules' `set_strength`, the styles of
    ``work_sides`` drawn at those long sides, the styles of ``exposure_targets`` at that exposure, the styles of
    ``contour_lines`` inked with those line settings and the styles of ``joint_upsampling`` upsampled from their work
    side with that range σ (the pipeline's metadata), and every style's photo smoothing
    raised by ``smoothing_noise`` times each photo's noise variance (0: not at all) and, on photos larger than
    ``smoothing_reference_side``, in proportion to their long side (0: not at all); all rebuilt into its config."""
    generator = load_generator(model)
    changes = {}
    for flag, key, given in (
        ("work_side", "work_sides", work_sides),
        ("exposure_target", "exposure_targets", exposure_targets),
        ("contour_lines", "contour_lines", contour_lines),
        ("joint_upsampling", "joint_upsampling", joint_upsampling),
    ):
        if given:
            unknown = sorted(set(given) - set(generator.styles))
            if unknown:
                raise SystemExit(f"--{flag}: {model} has no style {unknown[0]!r} (styles {generator.styles})")
            changes[key] = {name: value for name, value in {**getattr(generator, key), **given}.items() if value}
    for key, given in (("smoothing_noise", smoothing_noise), ("smoothing_reference_side", smoothing_reference_side)):
        if given is not None:
            if getattr(generator, "photo_smoother", None) is None:
                raise SystemExit(f"--{key}: {model} has no photo smoothing (built without `photo_smoothing`)")
            changes[key] = given
    if changes:
        rebuilt = type(generator)(**{**generator.config, **changes})
        state = {**generator.state_dict()}  # the checkpoint's weights...
        gain = "photo_smoother.noise_gain.weight"
        if "smoothing_noise" in changes:  # ...but the noise gain as asked: every style's, or none
            state.pop(gain, None)
            if rebuilt.photo_smoother.noise_gain is not None:
                state[gain] = rebuilt.photo_smoother.noise_gain.weight.detach()
        rebuilt.load_state_dict(state)
        generator = rebuilt.to(next(generator.parameters()).dtype).eval()
    for flag, by_style in (strengths or {}).items():
        attribute, what, key = STRENGTHS[flag]
        for style, strength in by_style.items():
            if style not in generator.styles:
                raise SystemExit(f"--{flag}: {model} has no style {style!r} (styles {generator.styles})")
            if getattr(generator, attribute, None) is None:
                raise SystemExit(f"--{flag}: {model} has no {what} (built without `{key}`)")
            getattr(generator, attribute).set_strength(generator.styles.index(style), strength)
    return generator


def export_settings(args) -> dict:
    """The command line's export-time settings as `load_styles_generator`'s keyword arguments, for the evaluation and
    the export alike."""
    return {
        "strengths": args.strengths,
        "work_sides": args.work_sides,
        "smoothing_noise": args.smoothing_noise,
        "exposure_targets": args.exposure_targets,
        "contour_lines": args.contour_lines_settings,
        "joint_upsampling": args.joint_upsampling_sigmas,
        "smoothing_reference_side": args.smoothing_reference_side,
    }


def evaluate_checkpoint(
    model: str,
    dtype: str,
    rows,
    style: str | None = None,
    target_column="target_image",
    settings: dict | None = None,
) -> dict:
    """Load a checkpoint into the pipeline users run (drawing ``style``, for a style-conditioned one, with the
    export-time ``settings`` of `load_styles_generator`, its keyword arguments: `export_settings`), evaluate it on
    ``rows`` against ``target_column`` and print the summary."""
    if style is None:
        cartoonizer = Cartoonizer.from_pretrained(model, device="cpu", dtype=dtype)
    else:
        generator = load_styles_generator(model, **(settings or {}))
        cartoonizer = Cartoonizer(generator, device="cpu", dtype=dtype)
    cartoonizer.set_progress_bar_config(disable=True)
    metrics = evaluate(cartoonizer, rows, target_column, style)
    report(f"{model} ({style})" if style else model, metrics)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="generator checkpoint folder or Hub id")
    parser.add_argument("--pairs", required=True, help="make-pairs output folder")
    parser.add_argument("--split", default="validation", help="split of held-out photos (validation)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="inference precision")
    parser.add_argument("--export", default=None, help="write the model here: fp16 safetensors, config, model card")
    parser.add_argument(
        "--teacher",
        nargs="+",
        default=None,
        help="the --teacher value(s) the pairs were made with (for the card): one per style of a multi-style model",
    )
    parser.add_argument(
        "--teacher_noise",
        type=float,
        default=0.0,
        help="with --teacher: also run each teacher on the photo plus Gaussian noise of this many grey levels (0.5 is "
        "invisible) and report the error it removes: the teacher's own reproducibility, a ceiling for any student",
    )
    parser.add_argument("--json", default=None, help="also write the metrics here")
    parser.add_argument("--notes", default=None, help="with --export: a paragraph for the card (what it can't do)")
    parser.add_argument("--reference", default=None, help="also evaluate this checkpoint (e.g. a unet_256 baseline)")
    parser.add_argument(
        "--posterize",
        nargs="+",
        type=strength_item,
        default=[],
        metavar="STYLE=STRENGTH",
        help="a style-conditioned model: set these styles' posterizer strengths (0-1) before evaluating and exporting, "
        "e.g. toon=1 painterly=1 (their teachers' levels are hard; training settles at part strength)",
    )
    parser.add_argument(
        "--despeckle",
        nargs="+",
        type=strength_item,
        default=[],
        metavar="STYLE=STRENGTH",
        help="a style-conditioned model: set these styles' median strengths (0-1) before evaluating and exporting, "
        "e.g. toon=1 (its teacher medians its levels at full strength; training settles at part strength)",
    )
    parser.add_argument(
        "--work_side",
        nargs="+",
        type=side_item,
        default=[],
        metavar="STYLE=SIDE",
        help="a style-conditioned model: draw these styles at this long side (px) on larger photos and upsample, as "
        "the model's `work_sides` (written to the exported config), e.g. ghibli=512 toon=512 (the pairs' --max_side)",
    )
    parser.add_argument(
        "--exposure_target",
        nargs="+",
        type=exposure_item,
        default=[],
        metavar="STYLE=TARGET",
        help="a style-conditioned model: brighten a darker photo to this 99th-percentile luminance before drawing it "
        "in these styles, and darken the cartoon back, as the model's `exposure_targets` (written to the exported "
        "config), e.g. ghibli=0.39 (the ghibli teacher's exposure_target; 0 removes it)",
    )
    parser.add_argument(
        "--contour_lines",
        nargs="+",
        default=[],
        metavar="STYLE",
        help="a style-conditioned model: ink these styles' cartoons with their teachers' contour lines at the photo's "
        "size, drawn by the pipeline with the teacher's own line algorithm, as the model's `contour_lines` (written to "
        "the exported config with the teacher's line settings; needs --teacher), e.g. toon",
    )
    parser.add_argument(
        "--joint_upsampling",
        nargs="+",
        type=sigma_item,
        default=[],
        metavar="STYLE=SIGMA",
        help="a style-conditioned model: bring these styles' cartoons from their work side to the photo's size by "
        "joint bilateral upsampling guided by the photo, with this range sigma in grey levels, instead of bilinear, as "
        "the model's `joint_upsampling` (written to the exported config; 0 removes it), e.g. toon=24",
    )
    parser.add_argument(
        "--smoothing_noise",
        type=float,
        default=None,
        metavar="GAIN",
        help="a model with photo smoothing: raise its ε by GAIN times each photo's estimated noise variance, for every "
        "style (written to the exported config; 0 removes it), e.g. 5: noisy photos' grain smoothed as the teachers do",
    )
    parser.add_argument(
        "--smoothing_reference_side",
        type=int,
        default=None,
        metavar="SIDE",
        help="a model with photo smoothing: the long side (px) its smoothing was learned at; on larger photos its ε "
        "grows in proportion to their long side, up to 2x (written to the exported config; 0 removes it), e.g. 512 "
        "(the pairs' --max_side): the teachers' smoothing windows grow with the photo, the model's do not",
    )
    args = parser.parse_args()
    args.work_sides = dict(args.work_side)
    args.exposure_targets = dict(args.exposure_target)
    args.joint_upsampling_sigmas = dict(args.joint_upsampling)
    args.contour_lines_settings = teacher_lines(parser, args)
    if args.smoothing_noise is not None and not 0 <= args.smoothing_noise <= MAX_SMOOTHING_NOISE:
        parser.error(f"--smoothing_noise must be in [0, {MAX_SMOOTHING_NOISE:g}], got {args.smoothing_noise}")
    if args.smoothing_reference_side is not None and not (
        args.smoothing_reference_side == 0 or is_work_side(args.smoothing_reference_side)
    ):
        parser.error(f"--smoothing_reference_side must be 0 or in [{MIN_WORK_SIDE}, {MAX_WORK_SIDE}]")
    if args.teacher_noise and not args.teacher:
        parser.error("--teacher_noise needs --teacher: the teacher(s) the pairs were made with")

    files = sorted(str(p.resolve()) for p in Path(args.pairs, "data").glob(f"{args.split}-*.parquet"))
    if not files:
        raise SystemExit(f"no {args.split}-*.parquet shards in {args.pairs}/data")
    rows = datasets.load_dataset("parquet", data_files={args.split: files}, split=args.split)
    styles = (
        json.loads((Path(args.model) / "config.json").read_text()).get("styles") if Path(args.model).is_dir() else None
    )
    # {flag: {style: strength}}, for the evaluation and the export
    strengths = args.strengths = {flag: dict(getattr(args, flag)) for flag in STRENGTHS if getattr(args, flag)}
    changed = {
        "work_side": bool(args.work_sides),
        "exposure_target": bool(args.exposure_targets),
        "contour_lines": bool(args.contour_lines),
        "joint_upsampling": bool(args.joint_upsampling_sigmas),
        "smoothing_noise": args.smoothing_noise is not None,
        "smoothing_reference_side": args.smoothing_reference_side is not None,
    }
    for flag in [*strengths, *(flag for flag, given in changed.items() if given)]:
        if not (styles and len(styles) > 1):
            parser.error(f"--{flag} needs a style-conditioned model (styles in its config.json)")
    if styles and len(styles) > 1:
        metrics = {
            "styles": {
                style: evaluate_checkpoint(args.model, args.dtype, rows, style, style, export_settings(args))
                for style in styles
            }
        }
        if args.teacher_noise and args.teacher:
            for style, teacher in zip(styles, args.teacher, strict=True):
                metrics["styles"][style]["teacher_reproducibility"] = report_reproducibility(
                    teacher, rows, style, args.teacher_noise, label=f"{style}: "
                )
        if args.json:
            Path(args.json).write_text(json.dumps(metrics, indent=2))
        if args.export:
            export_styles(args, styles, metrics["styles"])
        return
    metrics = evaluate_checkpoint(args.model, args.dtype, rows)
    if args.teacher_noise and args.teacher:
        metrics["teacher_reproducibility"] = report_reproducibility(
            args.teacher[0], rows, "target_image", args.teacher_noise
        )
    if args.reference:
        reference_metrics = evaluate_checkpoint(args.reference, args.dtype, rows)
        config = json.loads((Path(args.reference) / "config.json").read_text())
        steps = json.loads((Path(args.reference) / "training_args.json").read_text())["max_train_steps"]
        metrics["reference"] = {"model": args.reference, "config": config, "steps": steps, **reference_metrics}
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))
    if args.export:
        args.teacher = args.teacher[0] if args.teacher else None
        export(args, metrics)


def structure_cells(m: dict) -> str:
    """One table row's cells: error removed, flat share and gradient energy vs the teacher, palette, ink F-score."""
    return (
        f"{100 * m['error_removed']:.1f} % | {m['flat_share'] / m['teacher_flat_share']:.2f}× "
        f"({m['flat_share']:.2f} vs {m['teacher_flat_share']:.2f}) | {m['gradient_energy_vs_teacher']:.2f}× | "
        f"{m['palette_size']:.0f} ({m['teacher_palette_size']:.0f}) | {m['ink_f_score']:.2f} | "
        f"{m['psnr_model']:.2f} dB ({m['psnr_photo']:.2f})"
    )


WEIGHTS_NOTE = """\
Weights are stored in float16 and load into float32 (or any dtype the model runs in). The model is a derivative of the
training photos; their licences (CC, see the photo set's SOURCES.md) apply to it as they do to any derivative."""


def write_bundled_checkpoint(generator, export_dir: Path, description: str, details: str, summary: dict) -> None:
    """fp16 weights + config.json + a fresh model card (``description``, ``details``) + metrics.json into
    ``export_dir``, the way both bundled-model exports write them."""
    export_dir.mkdir(parents=True, exist_ok=True)
    (export_dir / "README.md").unlink(missing_ok=True)  # save_pretrained keeps an existing card: write a fresh one
    generator.half().save_pretrained(
        export_dir, model_card_kwargs={"description": description, "training_details": details}
    )
    (export_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"exported to {export_dir} ({sum(p.stat().st_size for p in export_dir.iterdir()) / 1e6:.2f} MB)")


def export_styles(args, styles: list[str], metrics: dict) -> None:
    """A multi-style model: fp16 weights + config + a card naming each style's teacher, with per-style metrics."""
    teachers = args.teacher or [None] * len(styles)
    if len(teachers) != len(styles):
        raise SystemExit(f"--teacher: give one teacher per style {styles}, got {teachers}")
    generator = load_styles_generator(args.model, **export_settings(args))
    training = json.loads((Path(args.model) / "training_args.json").read_text())
    config = generator.config  # the checkpoint's, with what the export changes (work_sides, smoothing_noise, ...)
    architecture = ", ".join(f"{k}={v!r}" for k, v in config.items() if not k.startswith("_"))
    parameters = sum(p.numel() for p in generator.parameters())
    rows = {
        split: sum(pq.read_metadata(p).num_rows for p in Path(args.pairs, "data").glob(f"{split}-*.parquet"))
        for split in ("train", "validation")
    }
    table = "\n".join(
        f"| `{style}` | `{teacher}` | {structure_cells(metrics[style]['all'])} |"
        for style, teacher in zip(styles, teachers, strict=True)
    )
    notes = f"\n{args.notes}\n" if args.notes else ""
    space = "CIE L*" if config.get("level_space") == "lab" else "luma"
    levels_note = f"; {space} posterizer started at the levels of each style's targets" if config.get("levels") else ""
    head_steps = training.get("tone_head_init_steps", 0)
    head_note = (
        f"per-style tone head fitted pixel by pixel first ({head_steps} steps)"
        if head_steps
        else "per-style tone head starting as the identity"
    )
    strengths_note = "".join(
        f"; `{style}` {STRENGTHS[flag][1]} set to strength {value:g} at export"
        for flag, by_style in args.strengths.items()
        for style, value in by_style.items()
    )
    distribution = training.get("lambda_gradient_distribution", 0)  # runs from before the term have none
    distribution_note = (
        f" + {distribution:g}·L1 between sorted luma edge strengths (Sobel)" if distribution else ""
    )  # the edge-distribution loss, `ghibligan.losses.gradient_distribution_loss`
    details = f"""One style-conditioned generator for {len(styles)} styles, each distilled from a classical toon teacher
of ghibligan (`make-pairs --teacher {" ".join(str(t) for t in teachers)} --max_side 512`): trained with ghibligan's own
tools to reproduce those teachers, **not** on Studio Ghibli images. Pick a style by name (`{styles[0]}` by default).

| style | teacher | error removed | flat share vs teacher | gradient energy vs teacher | palette (teacher) | ink F | \
PSNR (photo) |
| --- | --- | --- | --- | --- | --- | --- | --- |
{table}

Held-out: {rows["validation"]} photos at 512 px never seen in training ({rows["train"]} for training). Error removed:
1 − MSE(model, teacher) / MSE(photo, teacher). Flat share: pixels whose Sobel gradient is below 8/255 (see
`ghibligan.metrics`).

| | |
| --- | --- |
| generator | `{type(generator).__name__}({architecture})`, {parameters / 1e3:.1f} k parameters |
| objective | L1 + {training["lambda_gradient"]:g}·L1 on image gradients{distribution_note}, no GAN (λ_adversarial = \
{training["lambda_adversarial"]:g}); each sample trains on one style drawn from (seed, epoch, row); \
{head_note}{levels_note}{strengths_note} |
| steps | {training["max_train_steps"]} × batch {training["train_batch_size"]}, {training["resolution"]}² crops, \
Adam {training["learning_rate"]:g}, {training["lr_scheduler"]} |
{notes}
Reproduce it from scratch on a CPU: `MODEL=ghibli-styles bash scripts/train_bundled_model.sh PHOTOS_DIR`.
`model.onnx` is the same model as a float32 ONNX graph for onnxruntime, exported from these weights:
`Cartoonizer.from_pretrained(backend="onnxruntime")` runs it with no export on first use.
{WEIGHTS_NOTE}"""
    description = (
        "a multi-style model bundled with ghibligan: "
        + ", ".join(f"`{s}` (teacher `{t}`)" for s, t in zip(styles, teachers, strict=True))
        + "."
    )
    summary = {
        style: {"teacher": t, **{k: metrics[style][k] for k in ("all", "dark")}}
        for style, t in zip(styles, teachers, strict=True)
    }
    (Path(args.export) / "model.onnx").unlink(missing_ok=True)  # never a stale graph beside new weights
    write_bundled_checkpoint(generator, Path(args.export), description, details, summary)
    # The default model ships its ONNX graph, exported from the fp16 weights just written (what torch users load), so
    # backend="onnxruntime" needs no export on first use (~2 min on 2 cores). tests/test_onnx.py checks they agree.
    print("exporting model.onnx (about 2 minutes on 2 CPU cores)...")
    export_onnx(load_generator(args.export), Path(args.export))


def export(args, metrics: dict) -> None:
    """fp16 weights (loaded back in whatever dtype the model runs in) + config + a card stating what it is."""
    generator = load_generator(args.model)
    training = json.loads((Path(args.model) / "training_args.json").read_text())
    m, dark = metrics["all"], metrics["dark"]
    config = json.loads((Path(args.model) / "config.json").read_text())
    architecture = ", ".join(f"{k}={v!r}" for k, v in config.items() if not k.startswith("_"))
    parameters = sum(p.numel() for p in generator.parameters())
    objective = (
        f"Pix2Pix: vanilla GAN + {training['lambda_l1']:g}·L1 (the teacher is deterministic, so L1 leads and the GAN "
        f"term is a light touch), brightness-balanced sampling"
    )
    if config.get("tone_head_channels"):
        objective += (
            f"; the per-pixel tone head was first fitted to the pairs pixel by pixel "
            f"({training.get('tone_head_init_steps', 0)} steps, seconds)"
        )
    rows = {
        split: sum(pq.read_metadata(p).num_rows for p in Path(args.pairs, "data").glob(f"{split}-*.parquet"))
        for split in ("train", "validation")
    }
    reference = metrics.get("reference")
    reference_row = (
        f"| reference: pix2pix `UNetGenerator(ngf={reference['config']['ngf']}, "
        f"num_downs={reference['config']['num_downs']})`, {reference['steps']} steps on the same pairs | "
        f"{reference['all']['psnr_model']:.2f} dB, SSIM {reference['all']['ssim_model']:.4f}, "
        f"{100 * reference['all']['error_removed']:.1f} % of the error removed |"
        if reference
        else ""
    )
    dark_row = (
        f"| dark held-out photos (mean luma < 0.3) | {dark['psnr_model']:.2f} dB (photo: {dark['psnr_photo']:.2f}), "
        f"{100 * dark['error_removed']:.1f} % of the error removed ({dark['images']} photos) |"
        if dark
        else ""
    )
    extra_rows = "\n".join(row for row in (dark_row, reference_row) if row)
    structure_row = (
        f"| held-out structure: model (teacher, photo) | flat share {m['flat_share']:.2f} "
        f"({m['teacher_flat_share']:.2f}, {m['photo_flat_share']:.2f}); gradient energy "
        f"{m['gradient_energy_vs_photo']:.2f}× the photo's ({m['teacher_gradient_energy_vs_photo']:.2f}×), "
        f"{m['gradient_energy_vs_teacher']:.2f}× the teacher's; palette {m['palette_size']:.0f} colours "
        f"({m['teacher_palette_size']:.0f}, {m['photo_palette_size']:.0f}); ink-line F-score {m['ink_f_score']:.2f} |"
    )
    notes = f"\n{args.notes}\n" if args.notes else ""
    details = f"""Distilled from the classical toon teacher `{args.teacher}`: trained with ghibligan's own tools to
reproduce that teacher, **not** on Studio Ghibli images. It is a fast single-style model that shows the pipeline
working offline; train your own on a Ghibli pairs dataset or a diffusion teacher for a real Ghibli look.

| | |
| --- | --- |
| teacher | `{args.teacher}` (`ghibligan make-pairs --teacher {args.teacher} --max_side 512`) |
| data | {sum(rows.values())} CC-licensed photos: {rows["train"]} for training, {rows["validation"]} held out |
| generator | `{type(generator).__name__}({architecture})`, {parameters / 1e6:.2f} M parameters |
| objective | {objective} |
| steps | {training["max_train_steps"]} × batch {training["train_batch_size"]}, {training["resolution"]}² crops, bf16 |
| held-out PSNR to the teacher | {m["psnr_model"]:.2f} dB (photo: {m["psnr_photo"]:.2f}, {m["psnr_gain_db"]:+.2f} dB) |
| held-out SSIM to the teacher | {m["ssim_model"]:.4f} (the photo itself: {m["ssim_photo"]:.4f}) |
| photo→teacher error removed | {100 * m["error_removed"]:.1f} % ({m["images"]} held-out photos at 512 px) |
{structure_row}
{extra_rows}
{notes}
Reproduce it from scratch on a CPU (about 15 minutes on 2 cores): `MODEL=toon-painterly-unet bash
scripts/train_bundled_model.sh PHOTOS_DIR`.
{WEIGHTS_NOTE}"""
    description = (
        "a model bundled with ghibligan (the default before the three-style `ghibli-styles`), distilled from the "
        f"`{args.teacher}` teacher."
    )
    summary = {k: metrics[k] for k in ("all", "dark")}
    if reference:
        summary["reference"] = {k: reference[k] for k in ("model", "config", "steps", "all", "dark")}
    write_bundled_checkpoint(generator, Path(args.export), description, details, summary)


if __name__ == "__main__":
    main()
