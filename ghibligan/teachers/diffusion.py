"""Diffusion "teacher": photo → stylized image with any diffusers img2img checkpoint (Hub id or local folder).

A Ghibli-style Stable Diffusion fine-tune (optionally with LoRA weights) repaints each photo at a moderate
``strength``, which keeps its layout; the result is resized back to the photo's size so the pair stays aligned.
Each photo gets its own seed, so a run is reproducible photo by photo, whatever the batching or resumption.

Needs the ``teacher`` extra: ``pip install "ghibligan[teacher]"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from PIL import Image

from ..image_io import ImageInput, load_image


def photo_seed(key: str, base_seed: int = 0) -> int:
    """A stable per-photo seed from its name: the same photo gets the same seed in every run and order."""
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big")
    return (digest + base_seed) % 2**32


def working_size(width: int, height: int, resolution: int, multiple: int) -> tuple[int, int]:
    """Scale so the shorter side is ``resolution``, then round both sides to a multiple of ``multiple``."""
    scale = resolution / min(width, height)
    return (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )


class DiffusionTeacher:
    r"""Img2img with a diffusers pipeline.

    Args:
        model (`str`): Hub repo id or local folder of a diffusers img2img-capable checkpoint.
        prompt (`str`, *optional*): what the output should look like.
        negative_prompt (`str`, *optional*): what it should not.
        strength (`float`, *optional*, defaults to 0.5): how far from the photo to go (0 = unchanged, 1 = ignore it).
        guidance_scale (`float`, *optional*, defaults to 7.5): classifier-free guidance.
        num_inference_steps (`int`, *optional*, defaults to 30): denoising steps (``strength`` of them are run).
        resolution (`int`, *optional*, defaults to 512): shorter side the model works at.
        lora_weights (`str`, *optional*): LoRA weights (Hub id, folder or file) loaded into the pipeline.
        lora_scale (`float`, *optional*, defaults to 1.0): strength of the LoRA.
        device (`str`, *optional*): defaults to CUDA if available, else CPU.
        dtype (`torch.dtype`, *optional*): defaults to float16 on CUDA, float32 elsewhere.
        base_seed (`int`, *optional*, defaults to 0): mixed into each photo's seed.
    """

    def __init__(
        self,
        model: str,
        prompt: str = "a scene in the style of a Studio Ghibli anime film, hand-painted, soft colours",
        negative_prompt: str | None = "photo, photorealistic, blurry, deformed, text, watermark",
        strength: float = 0.5,
        guidance_scale: float = 7.5,
        num_inference_steps: int = 30,
        resolution: int = 512,
        lora_weights: str | None = None,
        lora_scale: float = 1.0,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        base_seed: int = 0,
        **from_pretrained_kwargs,
    ):
        try:
            from diffusers import AutoPipelineForImage2Image
        except ImportError as error:
            raise ImportError('The diffusion teacher needs diffusers: pip install "ghibligan[teacher]"') from error
        if not 0 < strength <= 1:
            raise ValueError(f"`strength` must be in (0, 1], got {strength!r}.")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
        self.pipe = AutoPipelineForImage2Image.from_pretrained(model, torch_dtype=dtype, **from_pretrained_kwargs)
        if lora_weights:
            self.pipe.load_lora_weights(lora_weights)
            self.pipe.fuse_lora(lora_scale=lora_scale)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.model, self.prompt, self.negative_prompt = model, prompt, negative_prompt
        self.strength, self.guidance_scale, self.num_inference_steps = strength, guidance_scale, num_inference_steps
        self.resolution, self.base_seed, self.lora_weights = resolution, base_seed, lora_weights
        self.multiple = 8 * getattr(self.pipe, "vae_scale_factor", 8)

    @property
    def name(self) -> str:
        return f"diffusers:{self.model}"

    def describe(self) -> dict:
        keys = ("prompt", "negative_prompt", "strength", "guidance_scale", "num_inference_steps", "resolution")
        return {"teacher": self.name, "lora_weights": self.lora_weights, **{k: getattr(self, k) for k in keys}}

    def generate(self, images: Sequence[ImageInput], keys: Sequence[str]) -> tuple[list[Image.Image], list[int]]:
        """Stylize ``images`` (one batch); ``keys`` name them for their seeds. Returns the outputs and seeds."""
        photos = [load_image(image).rgb for image in images]
        seeds = [photo_seed(key, self.base_seed) for key in keys]
        outputs: list[Image.Image | None] = [None] * len(photos)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, photo in enumerate(photos):
            by_size.setdefault(working_size(*photo.size, self.resolution, self.multiple), []).append(index)
        for size, indices in by_size.items():
            result = self.pipe(
                prompt=[self.prompt] * len(indices),
                negative_prompt=[self.negative_prompt] * len(indices) if self.negative_prompt else None,
                image=[photos[i].resize(size, Image.Resampling.LANCZOS) for i in indices],
                strength=self.strength,
                guidance_scale=self.guidance_scale,
                num_inference_steps=self.num_inference_steps,
                generator=[torch.Generator("cpu").manual_seed(seeds[i]) for i in indices],
            ).images
            for i, image in zip(indices, result, strict=True):
                outputs[i] = image.convert("RGB").resize(photos[i].size, Image.Resampling.LANCZOS)
        return outputs, seeds
