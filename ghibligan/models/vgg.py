"""VGG19 feature extractor up to conv4_4, for CartoonGAN's content loss (Simonyan & Zisserman, 2015).

Built in-package (there is no CPU torchvision here) with torchvision's layer indices, so the ImageNet weights of
``torchvision.models.vgg19`` — or of ``timm/vgg19.tv_in1k``, which stores the same tensors as safetensors — load by
name (``features.0.weight`` … ``features.25.bias``). Inputs are images in [-1, 1]; ImageNet normalisation is inside.
The weights come from a safetensors file, a folder holding ``model.safetensors``, or a Hub repo id; without them the
loss would be meaningless, so loading fails loudly rather than falling back to random weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

DEFAULT_VGG19_WEIGHTS = "timm/vgg19.tv_in1k"
# (out_channels per conv) per block; "M" = max-pool. Up to conv4_4: torchvision's features[0..25].
_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """VGG19 ``features`` up to conv4_4 (pre-activation output), frozen, ImageNet-normalising its input."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers[:-1])  # stop at conv4_4, before its ReLU (features[:26])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images + 1) / 2 - self.mean) / self.std  # [-1, 1] → ImageNet-normalised
        return self.features(x)  # (B, 512, H/8, W/8)

    @classmethod
    def from_pretrained(cls, weights: str | os.PathLike = DEFAULT_VGG19_WEIGHTS, **hub_kwargs) -> VGG19Features:
        """Load ImageNet weights from a safetensors file, a folder with model.safetensors, or a Hub repo id."""
        path = Path(weights)
        try:
            if path.is_file():
                file = path
            elif path.is_dir():
                file = path / "model.safetensors"
            elif path.suffix == ".safetensors":
                raise FileNotFoundError(f"no such file {str(path)!r}")
            else:
                file = Path(hf_hub_download(str(weights), "model.safetensors", **hub_kwargs))
            state_dict = load_file(str(file))
        except (OSError, ValueError, SafetensorError) as error:  # missing file or repo, offline, bad id, corrupt file
            raise RuntimeError(
                f"Could not load VGG19 weights from {str(weights)!r} ({type(error).__name__}: {error}). The CartoonGAN "
                f"content loss needs ImageNet VGG19 weights: pass `weights`, a safetensors file or a folder holding "
                f"model.safetensors (e.g. that of the Hub repo {DEFAULT_VGG19_WEIGHTS}, or torchvision's vgg19 state "
                f"dict saved with safetensors), or a Hub repo id when online."
            ) from error
        model = cls()
        wanted = model.state_dict()
        missing = [key for key in wanted if key not in state_dict]
        if missing:
            raise RuntimeError(f"{str(weights)!r} is not a VGG19 checkpoint: it lacks {missing[:4]}...")
        mismatched = [k for k in wanted if state_dict[k].shape != wanted[k].shape]
        if mismatched:
            raise RuntimeError(f"{str(weights)!r}: shapes of {mismatched[:4]} do not fit VGG19.")
        model.load_state_dict({key: state_dict[key] for key in wanted})
        return model
