"""Import generators saved by the reference PyTorch pix2pix (junyanz/pytorch-CycleGAN-and-pix2pix).

Its ``latest_net_G.pth`` is a bare ``state_dict`` of a recursive ``UnetGenerator``: each U-Net level is a
``UnetSkipConnectionBlock`` whose ``nn.Sequential`` holds the next level at index 1 (outermost) or 3 (the others), so
level ``j`` lives under ``model.model.1.model.`` + ``3.model.`` × (j - 1). This module maps those keys onto
`UNetGenerator`'s flat ``conv_in`` / ``down_blocks`` / ``up_blocks`` / ``conv_out`` and infers ``num_downs``, ``ngf``,
channels and norm from the tensors themselves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .models.unet import UNetGenerator

OUTER = "model.model."


def _level_prefix(level: int) -> str:
    """Key prefix of the ``nn.Sequential`` of U-Net level ``level`` (0 = outermost) in the reference layout."""
    return OUTER if level == 0 else OUTER + "1.model." + "3.model." * (level - 1)


def reference_key_map(num_downs: int) -> dict[str, str]:
    """Module prefix in the reference state dict → module prefix in `UNetGenerator`."""
    innermost = num_downs - 1
    mapping = {OUTER + "0": "conv_in", OUTER + "3": "conv_out.conv"}
    for level in range(1, num_downs):
        prefix, block = _level_prefix(level), f"down_blocks.{level - 1}"
        mapping[prefix + "1"] = f"{block}.conv"
        up = f"up_blocks.{num_downs - 1 - level}"
        if level == innermost:  # [LeakyReLU, downconv, ReLU, upconv, upnorm]
            mapping[prefix + "3"] = f"{up}.conv"
            mapping[prefix + "4"] = f"{up}.norm"
        else:  # [LeakyReLU, downconv, downnorm, submodule, ReLU, upconv, upnorm, (Dropout)]
            mapping[prefix + "2"] = f"{block}.norm"
            mapping[prefix + "5"] = f"{up}.conv"
            mapping[prefix + "6"] = f"{up}.norm"
    return mapping


def infer_reference_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """`UNetGenerator` kwargs that fit a reference pix2pix U-Net state dict."""
    if OUTER + "0.weight" not in state_dict or OUTER + "3.weight" not in state_dict:
        some = sorted(state_dict)[:5]
        raise ValueError(
            f"This is not a reference pix2pix UnetGenerator state dict: expected keys '{OUTER}0.weight' and "
            f"'{OUTER}3.weight', found e.g. {some}."
        )
    depth = max(len(re.findall(r"3\.model\.", key)) for key in state_dict if key.startswith(OUTER + "1.model."))
    conv_in = state_dict[OUTER + "0.weight"]  # (ngf, in_channels, 4, 4)
    conv_out = state_dict[OUTER + "3.weight"]  # (2 * ngf, out_channels, 4, 4): transposed conv
    has_running_stats = any(key.endswith("running_mean") for key in state_dict)
    return {
        "in_channels": conv_in.shape[1],
        "out_channels": conv_out.shape[1],
        "num_downs": depth + 2,
        "ngf": conv_in.shape[0],
        "norm": "batch" if has_running_stats else "instance",
    }


def convert_reference_state_dict(state_dict: dict[str, torch.Tensor], num_downs: int) -> dict[str, torch.Tensor]:
    """Rename a reference pix2pix U-Net state dict to `UNetGenerator` keys; every key must be used."""
    mapping = reference_key_map(num_downs)
    converted, unused = {}, []
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in mapping:
            converted[f"{mapping[module]}.{param}"] = tensor
        else:
            unused.append(key)
    if unused:
        raise ValueError(f"Keys with no place in a {num_downs}-level UNetGenerator: {unused[:10]}")
    return converted


def convert_pix2pix(
    checkpoint_path: str | os.PathLike, output_dir: str | os.PathLike, norm: str | None = None
) -> UNetGenerator:
    """Convert a reference ``latest_net_G.pth`` to a ghibligan checkpoint folder and return the model.

    ``norm`` (``"batch"`` or ``"instance"``) is inferred from the weights when not given; when given it must agree.
    """
    state_dict = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{str(checkpoint_path)!r} does not hold a state dict (got {type(state_dict).__name__}).")
    config = infer_reference_config(state_dict)
    if norm is not None and norm != config["norm"]:
        raise ValueError(
            f"--norm {norm} does not match the checkpoint, whose weights are those of {config['norm']} norm "
            f"({'with' if config['norm'] == 'batch' else 'without'} running statistics)."
        )
    model = UNetGenerator(**config)
    weights = convert_reference_state_dict(state_dict, config["num_downs"])
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Converted weights do not fit UNetGenerator({config}): missing {missing}, unexpected {unexpected}"
        )
    model.eval()
    model.save_pretrained(
        Path(output_dir),
        model_card_kwargs={
            "description": "a Pix2Pix U-Net converted from a reference pytorch-CycleGAN-and-pix2pix checkpoint "
            f"(`{Path(checkpoint_path).name}`) with `ghibligan convert-pix2pix`."
        },
    )
    return model
