"""The ``ghibligan`` command line: one subcommand per task."""

from __future__ import annotations

import argparse
import sys

from . import __version__

DESCRIPTION = """\
ghibligan turns photos into cartoon / Studio-Ghibli-style images with image-to-image GANs
(Pix2Pix U-Net, CartoonGAN ResNet) whose weights live on the Hugging Face Hub as safetensors.

Training runs through `accelerate launch train_accelerate.py --help`.
"""


def _convert_pix2pix(args: argparse.Namespace) -> int:
    from .convert import convert_pix2pix

    model = convert_pix2pix(args.checkpoint, args.output_dir, norm=args.norm)
    config = model._hub_mixin_config
    print(f"Wrote UNetGenerator({', '.join(f'{k}={v!r}' for k, v in sorted(config.items()))}) to {args.output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghibligan", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ghibligan {__version__}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"ghibligan: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
