"""Teachers: turn photos into target images, to make paired data for Pix2Pix-style distillation.

Every teacher has ``name`` (the ``--teacher`` value that rebuilds it), ``describe()`` (its parameters) and
``generate(images, keys) -> (outputs, seeds)``.
"""

from __future__ import annotations

from .ghibli import GhibliConfig, ghiblify
from .toon import PRESETS, ToonConfig, ToonTeacher, render, toonify

__all__ = ["PRESETS", "GhibliConfig", "ToonConfig", "ToonTeacher", "ghiblify", "make_teacher", "render", "toonify"]


def make_teacher(spec: str, **kwargs):
    """Build a teacher from its ``--teacher`` value: ``toon``, ``toon:PRESET`` (``toon``, ``painterly``, ``ghibli``) or
    ``diffusers:ID_OR_DIR``.

    ``kwargs`` go to the teacher (`ToonTeacher` overrides, or `DiffusionTeacher` options such as ``prompt``).
    """
    kind, _, argument = spec.partition(":")
    if kind == "toon":
        return ToonTeacher(argument or "toon", **kwargs)
    if kind == "diffusers":
        if not argument:
            raise ValueError("`--teacher diffusers:ID_OR_DIR` needs a model: a Hub repo id or a local folder.")
        from .diffusion import DiffusionTeacher

        return DiffusionTeacher(argument, **kwargs)
    raise ValueError(f"Unknown teacher {spec!r}: use toon, toon:{'|'.join(sorted(PRESETS))} or diffusers:ID_OR_DIR.")
