"""The ``ghibligan`` command line: one subcommand per task.

Flags are spelled like the training script's (``--max_side``, ``--output_dir``); the hyphenated spellings of earlier
versions (``--max-side``) still work, unlisted. Each command imports torch and the models only when it runs, so
``ghibligan --help`` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
ghibligan turns photos into cartoon / Studio-Ghibli-style images with image-to-image GANs
(Pix2Pix U-Net, CartoonGAN ResNet) whose weights live on the Hugging Face Hub as safetensors.

Training runs through `accelerate launch train_accelerate.py --help`.
"""


def _convert_pix2pix(args: argparse.Namespace) -> int:
    from .convert import convert_pix2pix

    model = convert_pix2pix(args.checkpoint, args.output_dir, norm=args.norm)
    config = model.config
    print(f"Wrote UNetGenerator({', '.join(f'{k}={v!r}' for k, v in sorted(config.items()))}) to {args.output_dir}")
    return 0


def _cartoonize(args: argparse.Namespace) -> int:
    from .cartoonize import cartoonize_files, check_device, plan_jobs
    from .image_io import DEFAULT_MAX_PIXELS
    from .pipeline import Cartoonizer

    check_device(args.device)
    jobs, problems = plan_jobs(args.inputs, args.output, image_format=args.format, recursive=args.recursive)
    if not jobs:
        for problem in problems:
            print(f"ghibligan: {problem}", file=sys.stderr)
        print("ghibligan: error: nothing to cartoonize", file=sys.stderr)
        return 2
    cartoonizer = Cartoonizer.from_pretrained(args.model, device=args.device, dtype=args.dtype, backend=args.backend)
    cartoonizer.style_index(args.style)  # an unknown style is refused now, with the model's styles, before any work
    cartoonizer.check_posterize(args.posterize)  # so is a posterizer strength the model cannot take
    cartoonizer.check_work_side(args.work_side)  # and a work side out of range
    cartoonizer.exposure_target(args.style, args.exposure_target)  # and an exposure target
    report = cartoonize_files(
        cartoonizer,
        jobs,
        style=args.style,
        posterize=args.posterize,
        work_side=args.work_side,
        exposure_target=args.exposure_target,
        contour_lines=args.contour_lines,
        joint_upsampling=args.joint_upsampling,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        max_side=args.max_side,
        tile=args.tile,
        smoothing=args.smoothing,
        smoothing_method=args.smoothing_method,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
    )
    report.failed[:0] = problems
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _export_onnx(args: argparse.Namespace) -> int:
    from .models.auto import load_generator
    from .onnx_export import export_onnx
    from .pipeline import bundled_model_path

    model = load_generator(args.model if args.model is not None else bundled_model_path())
    path = export_onnx(model, args.output, opset_version=args.opset_version)
    size_mb = path.stat().st_size / 2**20
    print(f"Wrote {path} ({type(model).__name__}, {size_mb:.1f} MB, opset {args.opset_version}; matches PyTorch)")
    if args.push_to_hub:
        from huggingface_hub import HfApi

        url = HfApi().upload_file(
            path_or_fileobj=str(path),
            path_in_repo=path.name,
            repo_id=args.push_to_hub,
            commit_message=f"Add {path.name} (ghibligan export-onnx)",
        )
        print(f"pushed: {url}")
    return 0


def _make_pairs_teacher(spec: str, args: argparse.Namespace, dtypes: dict, make_teacher):
    """The teacher of one ``--teacher`` value, with the diffusers options of ``args`` for a diffusers one."""
    if spec.startswith("diffusers"):
        options = {
            "prompt": args.prompt,
            "negative_prompt": args.negative_prompt,
            "strength": args.strength,
            "guidance_scale": args.guidance_scale,
            "num_inference_steps": args.num_inference_steps,
            "resolution": args.resolution,
            "lora_weights": args.lora_weights,
            "lora_scale": args.lora_scale,
            "device": args.device,
            "dtype": dtypes.get(args.dtype),
            "base_seed": args.seed,
        }
        return make_teacher(spec, **{k: v for k, v in options.items() if v is not None})
    return make_teacher(spec)


def _make_pairs(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from .pairs import check_make_pairs_args, make_pairs, photos_from_dataset, photos_from_folder, push_pairs_to_hub
    except ImportError as error:
        raise ValueError(
            f"make-pairs writes Hugging Face datasets: pip install 'ghibligan[train]' ({error})"
        ) from error
    from .pipeline import DTYPES
    from .teachers import make_teacher

    if (args.photos is None) == (args.photos_dataset is None):
        raise ValueError("Give exactly one photo source: --photos DIR or --photos_dataset ID.")
    if args.photos is not None and not Path(args.photos).is_dir():
        raise FileNotFoundError(f"--photos {args.photos!r} is not a folder.")
    sizes = {"max_side": args.max_side, "shard_size": args.shard_size, "batch_size": args.batch_size}
    check_make_pairs_args(  # before the teacher
        args.output_dir, **sizes, validation_fraction=args.validation_fraction, photo_variants=args.photo_variants
    )
    if args.photos is not None:
        photos = list(photos_from_folder(args.photos, recursive=True))
        total = len(photos)
    else:
        photos = photos_from_dataset(args.photos_dataset, args.image_column, args.split, args.dataset_config_name)
        total = None
    teachers = [_make_pairs_teacher(spec, args, DTYPES, make_teacher) for spec in args.teacher]
    report = make_pairs(
        photos,
        teachers[0] if len(teachers) == 1 else teachers,
        args.output_dir,
        max_side=args.max_side,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        validation_fraction=args.validation_fraction,
        total=total,
        photo_variants=args.photo_variants,
    )
    written = ", ".join(f"{n} {split}" for split, n in sorted(report.written.items())) or "none"
    print(f"pairs written: {written}; already done: {report.already_done}; failed: {len(report.failed)}")
    for failure in report.failed:
        print(f"  failed: {failure}", file=sys.stderr)
    if args.push_to_hub:
        print(f"pushed: {push_pairs_to_hub(args.output_dir, args.push_to_hub)}")
    return 1 if report.failed else 0


def _add_option(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add ``--name_with_underscores``, and its hyphenated spelling of earlier versions as a hidden alias."""
    parser.add_argument(name, **kwargs)
    alias = {key: value for key, value in kwargs.items() if key in ("type", "choices", "action")}
    parser.add_argument(
        name.replace("_", "-"), dest=name.lstrip("-"), default=argparse.SUPPRESS, help=argparse.SUPPRESS, **alias
    )


def _torch_dtype(name: str) -> str:
    """argparse ``type`` of a precision flag: a key of `pipeline.DTYPES` (imported here, so --help stays fast)."""
    from .pipeline import DTYPES

    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"{name!r}: choose one of {', '.join(DTYPES)}")
    return name


def _inference_dtype(name: str) -> str:
    """``auto`` or a key of `pipeline.DTYPES`."""
    from .pipeline import DTYPES

    if name != "auto" and name not in DTYPES:
        raise argparse.ArgumentTypeError(f"{name!r}: choose auto or one of {', '.join(DTYPES)}")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghibligan", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="store_true", help="show the version and exit")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    convert = commands.add_parser(
        "convert-pix2pix",
        help="convert a reference pix2pix latest_net_G.pth to a ghibligan checkpoint",
        description="Convert a U-Net generator saved by junyanz/pytorch-CycleGAN-and-pix2pix (a plain state_dict, "
        "e.g. latest_net_G.pth) into a ghibligan checkpoint folder: config.json + model.safetensors + README.md. "
        "Depth, width, channels and norm are read from the weights. The .pth is loaded with weights_only=True.",
    )
    convert.add_argument("checkpoint", help="path to the reference .pth state dict")
    convert.add_argument("output_dir", help="folder to write the ghibligan checkpoint to")
    convert.add_argument(
        "--norm",
        choices=["batch", "instance"],
        default=None,
        help="norm the reference model was trained with (default: inferred from the weights; an error if it disagrees)",
    )
    convert.set_defaults(func=_convert_pix2pix)

    cartoonize = commands.add_parser(
        "cartoonize",
        help="turn photos (files, folders, globs) or videos into cartoons",
        description="Cartoonize images and videos. Folders keep their relative layout under the output folder; an "
        "output folder inside an input folder is not read as input. A file that cannot be read, or an output that "
        "cannot be written, is reported by name and the run goes on; the exit code is 1 if any failed or a video "
        "was only partly readable. Inputs are never overwritten, and existing outputs only with --overwrite. "
        "Videos keep their size and fps; .mp4/.m4v/.mov/.mkv are written as MPEG-4, .avi as Motion JPEG, .webm as "
        "VP8 (if this OpenCV build can; else refused before any work). Audio is copied when ffmpeg is available "
        "(on PATH, or pip install 'ghibligan[video]'), and dropped otherwise.",
        epilog="examples:\n"
        "  ghibligan cartoonize photo.jpg -o cartoon.png\n"
        "  ghibligan cartoonize holiday/ -r -o holiday-toon/ --max_side 1536 --smoothing 0.3\n"
        "  ghibligan cartoonize 'shots/*.jpg' -o out/ --model you/your-ghibli-unet --dtype bfloat16\n"
        "  ghibligan cartoonize photo.jpg -o photo-toon.png --model you/three-style-model --style toon\n"
        "  ghibligan cartoonize clip.mp4 -o clip-toon.mp4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cartoonize.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders, or globs")
    cartoonize.add_argument(
        "-o", "--output", required=True, help="output file (for a single input) or folder (created if needed)"
    )
    cartoonize.add_argument(
        "--model", default=None, help="checkpoint folder or Hub repo id (default: the model bundled with ghibligan)"
    )
    cartoonize.add_argument(
        "--style",
        default=None,
        metavar="NAME",
        help="style of a style-conditioned model, one of the names in its config.json 'styles' (e.g. ghibli, toon, "
        "painterly; default: its first); a model without styles takes none. An unknown name is refused with the "
        "model's styles, before any work",
    )
    cartoonize.add_argument(
        "--posterize",
        type=float,
        default=None,
        metavar="STRENGTH",
        help="for a model with a posterizer (the bundled one): how hard its flat luminance levels are, 0 (none) "
        "to 1 (flat levels, sharp borders: a crisper cartoon, less faithful to the teacher); default: the strength the "
        "model learned for the style (toon 0.65, painterly 0.48, ghibli 0)",
    )
    cartoonize.add_argument(
        "--work_side",
        type=int,
        default=None,
        metavar="PIXELS",
        help="draw photos whose long side is larger than this at this side and upsample the cartoon to their size; 0 "
        "draws every photo at its own size; default: the model's choice per style (the bundled model draws ghibli "
        "and toon at 512 px, the size their teachers' look is defined at, painterly at the photo's size)",
    )
    cartoonize.add_argument(
        "--exposure_target",
        type=float,
        default=None,
        metavar="LUMINANCE",
        help="brighten a photo whose 99th-percentile luminance (linear light, 0-1) is below this to it (at most 4x), "
        "draw it and darken the cartoon back, so a dark photo gets the regions of a normal exposure; 0 draws every "
        "photo as it is; default: the model's choice per style (the bundled model: ghibli 0.39, as its teacher)",
    )
    cartoonize.add_argument(
        "--contour_lines",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ink the photo's edges on the cartoon at the photo's size, with the toon teacher's line algorithm "
        "(--no-contour_lines: none); default: the model's choice per style (the bundled model: toon, as its teacher)",
    )
    cartoonize.add_argument(
        "--joint_upsampling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bring a cartoon drawn at the work side to the photo's size by joint bilateral upsampling guided by the "
        "photo, so its borders stay as crisp as the photo's edges (--no-joint_upsampling: bilinear); default: the "
        "model's choice per style (the bundled model: toon, whose teacher draws at the photo's size)",
    )
    cartoonize.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders of folder inputs")
    cartoonize.add_argument(
        "--format", default="png", choices=["png", "jpg", "webp"], help="image format in an output folder (png)"
    )
    cartoonize.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the inputs)")
    _add_option(
        cartoonize,
        "--max_side",
        type=int,
        default=None,
        help="downscale so the longer side is at most this many pixels",
    )
    cartoonize.add_argument(
        "--smoothing", type=float, default=None, help="edge-preserving smoothing of the output, strength in [0, 1]"
    )
    _add_option(
        cartoonize, "--smoothing_method", default="guided", choices=["guided", "bilateral"], help="smoothing filter"
    )
    cartoonize.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile side for large images (default: 1024² tiles where one pass would need over 1 GiB; 0: never)",
    )
    _add_option(
        cartoonize, "--batch_size", type=int, default=4, help="equal-sized photos, or video frames, run together (4)"
    )
    _add_option(
        cartoonize,
        "--num_workers",
        type=int,
        default=2,
        help="threads that decode and encode files while the model runs (2; 0: none)",
    )
    cartoonize.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    cartoonize.add_argument(
        "--dtype",
        default="auto",
        type=_inference_dtype,
        help="inference precision: auto, float32, bfloat16 or float16 (auto: bf16 on GPUs and on CPUs with native "
        "bf16, else float32)",
    )
    cartoonize.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="torch, or onnxruntime: runs the checkpoint's model.onnx (exported once and cached if it has none; "
        "float32 only; pip install 'ghibligan[onnx]')",
    )
    _add_option(
        cartoonize,
        "--max_pixels",
        type=int,
        default=None,
        help="refuse images with more pixels than this before decoding them (decompression bombs; default: "
        "ghibligan.image_io.DEFAULT_MAX_PIXELS, 100 MP)",
    )
    cartoonize.set_defaults(func=_cartoonize)

    export = commands.add_parser(
        "export-onnx",
        help="export a generator to ONNX for onnxruntime (any batch and image size)",
        description="Export a generator checkpoint to ONNX (opset >= 17, dynamic batch, height and width; the graph "
        "pads to the network's size multiple and crops back itself, so it takes any size). The file is checked "
        "against PyTorch with onnxruntime before it is kept. Write it into the checkpoint folder, beside "
        "model.safetensors, and `Cartoonizer.from_pretrained(folder, backend='onnxruntime')` or "
        "`ghibligan cartoonize --backend onnxruntime` use it. Needs the onnx extra.",
        epilog="examples:\n"
        "  ghibligan export-onnx -o toon.onnx                                 # the bundled model\n"
        "  ghibligan export-onnx --model my-unet -o my-unet/                  # my-unet/model.onnx\n"
        "  ghibligan export-onnx --model you/ghibli-unet -o model.onnx --push_to_hub you/ghibli-unet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument(
        "--model", default=None, help="checkpoint folder or Hub repo id (default: the model bundled with ghibligan)"
    )
    export.add_argument(
        "-o", "--output", required=True, help="an .onnx file, or a folder to write model.onnx into (created if needed)"
    )
    export.add_argument("--opset_version", "--opset-version", type=int, default=18, help="ONNX opset, at least 17 (18)")
    export.add_argument(
        "--push_to_hub",
        "--push-to-hub",
        default=None,
        metavar="ID",
        help="upload the file to this Hub model repo, beside its model.safetensors",
    )
    export.set_defaults(func=_export_onnx)

    pairs = commands.add_parser(
        "make-pairs",
        help="make a paired photo → cartoon dataset with a teacher (toon or diffusers img2img)",
        description="Run a teacher on photos and write (input_image, target_image) pairs as a Hugging Face dataset "
        "(parquet shards with embedded images, plus a dataset card) that train_accelerate.py reads with "
        "--train_data_dir OUT. Re-running resumes: photos already done are skipped.",
        epilog="examples:\n"
        "  ghibligan make-pairs --photos photos/ --teacher toon:painterly --output_dir pairs/\n"
        "  ghibligan make-pairs --photos_dataset you/photos --image_column image --teacher diffusers:you/ghibli-sd \\\n"
        "      --strength 0.45 --prompt 'studio ghibli style' --output_dir pairs/ --push_to_hub you/ghibli-pairs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = pairs.add_argument_group("photos (one of)")
    source.add_argument("--photos", default=None, help="folder of photos (searched recursively)")
    source.add_argument("--photos_dataset", default=None, help="Hub (or local) image dataset id, streamed")
    source.add_argument("--image_column", default="image", help="image column of --photos_dataset (image)")
    source.add_argument("--split", default="train", help="split of --photos_dataset (train)")
    source.add_argument("--dataset_config_name", default=None, help="config of --photos_dataset")
    output = pairs.add_argument_group("output")
    output.add_argument("--output_dir", required=True, help="dataset folder to write (or resume)")
    output.add_argument(
        "--teacher",
        nargs="+",
        default=["toon"],
        help="toon, toon:toon, toon:painterly, toon:ghibli or diffusers:ID_OR_DIR; several (e.g. toon:ghibli "
        "toon:toon) write one target column per teacher, named after its style (ghibli, toon)",
    )
    output.add_argument("--max_side", type=int, default=1024, help="downscale photos to this longer side (1024)")
    output.add_argument("--validation_fraction", type=float, default=0.0, help="photos held out as validation (0)")
    output.add_argument(
        "--photo_variants",
        type=int,
        default=0,
        metavar="N",
        help="also run the teachers on N photometric variants of every training photo (exposure, white balance, "
        "haze, noise, JPEG; seeded by the photo's name), so a student learns the teachers on dark, noisy or hazy "
        "photos too; held-out photos get none (0)",
    )
    output.add_argument("--shard_size", type=int, default=16, help="pairs per parquet shard; the resume unit (16)")
    output.add_argument("--batch_size", type=int, default=1, help="photos per teacher call (1)")
    output.add_argument("--push_to_hub", default=None, metavar="ID", help="upload the dataset to this Hub repo id")
    diffusion = pairs.add_argument_group("diffusers teacher")
    diffusion.add_argument("--prompt", default=None, help="what the target should look like")
    diffusion.add_argument("--negative_prompt", default=None, help="what it should not look like")
    diffusion.add_argument("--strength", type=float, default=None, help="img2img strength in (0, 1] (0.5)")
    diffusion.add_argument("--guidance_scale", type=float, default=None, help="classifier-free guidance (7.5)")
    diffusion.add_argument("--num_inference_steps", type=int, default=None, help="denoising steps (30)")
    diffusion.add_argument("--resolution", type=int, default=None, help="shorter side the model works at (512)")
    diffusion.add_argument("--lora_weights", default=None, help="LoRA weights to load (Hub id, folder or file)")
    diffusion.add_argument("--lora_scale", type=float, default=None, help="LoRA strength (1.0)")
    diffusion.add_argument("--seed", type=int, default=None, help="base seed mixed into every photo's seed (0)")
    diffusion.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    diffusion.add_argument(
        "--dtype", default=None, type=_torch_dtype, help="precision: float32, float16 or bfloat16 (the teacher's)"
    )
    pairs.set_defaults(func=_make_pairs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "version", False):
        from . import __version__

        print(f"ghibligan {__version__}")
        return 0
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"ghibligan: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Outputs in progress were removed on the way up. Exit at once: decode/encode threads may still be inside
        # OpenCV, and tearing the interpreter down around them can crash instead of ending with one line.
        print("ghibligan: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
