"""Export a ghibligan generator to ONNX, so onnxruntime can run it (see `ghibligan.onnx_generator`).

The graph is exported with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) at opset 18, with a dynamic
batch, height and width. Two things in the models are Python branches on the image size, which an exported graph
cannot hold:

* the padding to a multiple of ``size_multiple`` (``if pad_h == 0 and pad_w == 0``, reflect or replicate): the model
  is exported for sides that are *multiples* of ``size_multiple`` (declared to the exporter as ``size_multiple * Dim``,
  so the branch is provably the no-padding one), and the padding is then written around that graph in ONNX ops
  (`_pad_in_graph`: the same split, reflect or — with an ``If`` on the sizes — edge, and the crop back), so the file
  takes any size on its own;
* the tone head's row chunking at inference (a loop over 64-row slices, for the CPU cache): exported in its
  single-pass form, which computes the same per-pixel function.

A model with ``size_multiple`` 1 (`GuidedFilterGenerator`) takes any size by itself: its forward has no Python
branch on the size (its padding is an index gather), so it is exported with a free height and width.

Every export is verified: onnxruntime runs the file at two sizes that are not multiples of ``size_multiple`` and must
reproduce the PyTorch model; if it does not, the file is deleted and a `ValueError` says
why. A style-conditioned generator (a ``styles`` attribute and ``forward(sample, style)``) gets ``style`` as a second,
int64 input of shape (B,).

The file carries the model's class, config, ``size_multiple`` and styles in its metadata, so it can sit beside
``model.safetensors`` in a checkpoint folder or Hub repo and be loaded on its own:

    ```py
    >>> from ghibligan import load_generator
    >>> from ghibligan.onnx_export import export_onnx
    >>> model = load_generator("my-unet")
    >>> export_onnx(model, "my-unet")  # writes my-unet/model.onnx
    ```
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import constants
from torch import nn

from .onnx_generator import ONNX_FILENAME, OnnxGenerator, metadata_key

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
EXPORT_FORMAT = 2  # bump when the graph's contract (inputs, metadata) changes: invalidates cached exports
VERIFY_TOLERANCE = 1e-3  # max |onnxruntime - torch| in [-1, 1] units: 0.13 grey levels; float error is ~1e-6

_UNSET = object()  # an attribute a module did not set on itself


def _check_exportable(model: nn.Module) -> int:
    """Refuse, with a reason, what is not a ghibligan image generator; return its ``size_multiple``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module generator, got {type(model).__name__}.")
    name = type(model).__name__
    multiple = getattr(model, "size_multiple", None)
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise ValueError(
            f"Cannot export {name}: it has no integer `size_multiple` (got {multiple!r}), so it is not a ghibligan "
            f"generator. export_onnx takes UNetGenerator, ResNetGenerator and style generators, whose images come "
            f"out at the size they went in."
        )
    styles = getattr(model, "styles", None)
    if styles is not None and (not isinstance(styles, (list, tuple)) or not styles):
        raise ValueError(f"Cannot export {name}: `styles` must be a non-empty list of style names, got {styles!r}.")
    return multiple


@contextlib.contextmanager
def _single_pass_rows(model: nn.Module) -> Iterator[None]:
    """Make modules with row-sliced inference (``inference_pixels``, the tone heads) take their single-pass path."""
    sliced = [module for module in model.modules() if hasattr(module, "inference_pixels")]
    saved = [module.__dict__.get("inference_pixels", _UNSET) for module in sliced]
    for module in sliced:
        module.inference_pixels = None
    try:
        yield
    finally:
        for module, value in zip(sliced, saved, strict=True):
            if value is _UNSET:
                del module.inference_pixels  # back to the class attribute
            else:
                module.inference_pixels = value


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notes that concern no ghibligan model (missing torchvision ops, torch.export internals)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)  # batch, shared
            yield
    finally:
        registration.setLevel(level)


def _example_inputs(model: nn.Module, multiple: int) -> tuple[torch.Tensor, ...]:
    """Batch 2 (sizes 0 and 1 would be specialized), sides 2 and 3 multiples: distinct, so no dims get unified."""
    parameter = next(model.parameters(), None)
    in_channels = (getattr(model, "_hub_mixin_config", None) or {}).get("in_channels", 3)
    sample = torch.rand(2, in_channels, 2 * multiple, 3 * multiple) * 2 - 1
    if parameter is not None:
        sample = sample.to(parameter.device)
    if getattr(model, "styles", None) is None:
        return (sample,)
    style = torch.tensor([0, len(model.styles) - 1], dtype=torch.long, device=sample.device)
    return sample, style


def _metadata(model: nn.Module, multiple: int) -> dict[str, str]:
    config = getattr(model, "_hub_mixin_config", None) or {}
    styles = getattr(model, "styles", None)
    return {
        metadata_key("class_name"): type(model).__name__,
        metadata_key("config"): json.dumps(config, sort_keys=True),
        metadata_key("size_multiple"): str(multiple),
        metadata_key("styles"): json.dumps(list(styles) if styles is not None else None),
        metadata_key("format"): str(EXPORT_FORMAT),
    }


def _verify(model: nn.Module, path: Path, multiple: int) -> float:
    """Largest |onnxruntime - torch| over two batches at sizes that need padding (and every style)."""
    runner = OnnxGenerator(path, num_threads=1)
    styles = getattr(model, "styles", None)
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    base = max(multiple, 16)  # reflect-padded convs need a few pixels at the coarsest level
    for height, width in [(2 * base + 3, 3 * base - 5), (3 * base - 1, base + 2)]:
        sample = torch.rand(2, runner.in_channels, height, width, generator=generator) * 2 - 1
        for index in range(len(styles)) if styles is not None else [None]:
            style = None if index is None else torch.full((2,), index, dtype=torch.long)
            with torch.no_grad():
                expected = (model(sample) if style is None else model(sample, style)).float().numpy()
            got = runner(sample.numpy(), None if style is None else style.numpy())
            if got.shape != expected.shape:
                raise ValueError(
                    f"output shape {got.shape} differs from PyTorch's {expected.shape} at {height}x{width}"
                )
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_onnx(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    opset_version: int = DEFAULT_OPSET,
    verify: bool = True,
) -> Path:
    r"""Export a generator to an ONNX file that onnxruntime runs at any batch size and image size.

    Args:
        model (`nn.Module`): a `UNetGenerator`, `ResNetGenerator` or style generator (``styles`` attribute,
            ``forward(sample, style)``). It is exported in eval mode, in float32, on the CPU; the model passed in is
            left as it was.
        output (`str` or `os.PathLike`): an ``.onnx`` file, or a folder (e.g. a checkpoint folder written by
            `save_pretrained`) to write ``model.onnx`` into.
        opset_version (`int`, *optional*, defaults to 18): ONNX opset, at least 17.
        verify (`bool`, *optional*, defaults to `True`): run the file with onnxruntime at two padded sizes and
            refuse it (delete it, raise `ValueError`) unless it matches PyTorch within 1e-3.

    Returns:
        `Path`: the ``.onnx`` file written.
    """
    multiple = _check_exportable(model)
    if not isinstance(opset_version, int) or opset_version < 17:
        raise ValueError(f"`opset_version` must be an integer >= 17, got {opset_version!r}.")
    path = Path(output)
    if path.suffix != ".onnx":
        path = path / ONNX_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)

    was_training = model.training
    parameter = next(model.parameters(), None)
    device, dtype = (parameter.device, parameter.dtype) if parameter is not None else (None, None)
    model.eval().to(device="cpu", dtype=torch.float32)
    try:
        inputs = _example_inputs(model, multiple)
        batch = torch.export.Dim("batch")
        blocks_h, blocks_w = torch.export.Dim("height_blocks"), torch.export.Dim("width_blocks")
        shapes: list[dict] = [{0: batch, 2: multiple * blocks_h, 3: multiple * blocks_w}]
        names = ["sample"]
        if len(inputs) == 2:
            shapes.append({0: batch})
            names.append("style")
        try:
            with _single_pass_rows(model), _quiet_exporter():
                program = torch.onnx.export(
                    model,
                    inputs,
                    dynamo=True,
                    dynamic_shapes=tuple(shapes),
                    opset_version=opset_version,
                    input_names=names,
                    output_names=["image"],
                    verbose=False,
                )
        except Exception as error:  # torch.export / onnxscript raise many types; re-raised with the model named
            raise ValueError(
                f"Cannot export {type(model).__name__} to ONNX: {type(error).__name__}: {error}\n"
                f"Its forward must be traceable by torch.export with a dynamic batch, height and width (no Python "
                f"branches on tensor values or image sizes, other than padding to `size_multiple`)."
            ) from error
        program.save(str(path))
        _finish_file(path, _metadata(model, multiple))
        if verify:
            try:
                error = _verify(model, path, multiple)
            except Exception:
                path.unlink(missing_ok=True)
                raise
            if error > VERIFY_TOLERANCE:
                path.unlink(missing_ok=True)
                raise ValueError(
                    f"Cannot export {type(model).__name__}: the ONNX graph differs from PyTorch by up to {error:.3g} "
                    f"(tolerance {VERIFY_TOLERANCE}) at sizes other than the example's. Its forward likely branches "
                    f"on the image size in a way the exporter fixed to one case."
                )
            logger.info("Exported %s to %s (max |onnxruntime - torch| = %.2g)", type(model).__name__, path, error)
    finally:
        if parameter is not None:
            model.to(device=device, dtype=dtype)
        model.train(was_training)
    return path


def _pad_in_graph(proto, multiple: int) -> None:
    """Wrap the graph (sides multiples of ``multiple``) in the models' padding and crop, so it takes any size.

    The ONNX twin of `ghibligan.models.layers.pad_to_multiple` / `crop_padding`: pad H and W up to the next multiple,
    half on each side (the extra pixel at the bottom / right), mirroring, or repeating the edge when a pad is not
    smaller than its side (the joint rule of the torch code, as an ``If`` on the sizes); then crop the output back.
    """
    from onnx import TensorProto, helper

    graph = proto.graph
    sample, image = graph.input[0], graph.output[0]
    for node in graph.node:  # the exported graph now reads the padded sample and writes the padded image
        node.input[:] = ["padded_sample" if name == sample.name else name for name in node.input]
        node.output[:] = ["padded_image" if name == image.name else name for name in node.output]
    constants = {
        "pad_multiple": [multiple], "pad_two": [2], "pad_zeros": [0, 0], "pad_axes": [2, 3],
        "pad_hw_start": [2], "pad_hw_end": [4],
    }  # fmt: skip
    for name, values in constants.items():
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))

    def pad_branch(mode: str):
        node = helper.make_node("Pad", [sample.name, "pad_pads"], [f"padded_{mode}"], mode=mode)
        output = helper.make_tensor_value_info(f"padded_{mode}", TensorProto.FLOAT, None)
        return helper.make_graph([node], f"pad_{mode}", [], [output])

    before = [
        helper.make_node("Shape", [sample.name], ["pad_shape"]),
        helper.make_node("Slice", ["pad_shape", "pad_hw_start", "pad_hw_end"], ["pad_hw"]),  # [H, W]
        helper.make_node("Mod", ["pad_hw", "pad_multiple"], ["pad_remainder"]),
        helper.make_node("Sub", ["pad_multiple", "pad_remainder"], ["pad_missing"]),
        helper.make_node("Mod", ["pad_missing", "pad_multiple"], ["pad_total"]),  # [pad_h, pad_w]
        helper.make_node("Div", ["pad_total", "pad_two"], ["pad_begin"]),  # [top, left]
        helper.make_node("Sub", ["pad_total", "pad_begin"], ["pad_end"]),  # [bottom, right]
        helper.make_node("Concat", ["pad_zeros", "pad_begin", "pad_zeros", "pad_end"], ["pad_pads"], axis=0),
        helper.make_node("Max", ["pad_begin", "pad_end"], ["pad_widest"]),
        helper.make_node("Less", ["pad_widest", "pad_hw"], ["pad_fits"]),  # reflect needs pad < side
        helper.make_node("Cast", ["pad_fits"], ["pad_fits_int"], to=TensorProto.INT64),
        helper.make_node("ReduceMin", ["pad_fits_int"], ["pad_all_fit"], keepdims=0),
        helper.make_node("Cast", ["pad_all_fit"], ["pad_reflect"], to=TensorProto.BOOL),
        helper.make_node(
            "If", ["pad_reflect"], ["padded_sample"], then_branch=pad_branch("reflect"), else_branch=pad_branch("edge")
        ),
    ]
    after = [
        helper.make_node("Add", ["pad_begin", "pad_hw"], ["crop_end"]),
        helper.make_node("Slice", ["padded_image", "pad_begin", "crop_end", "pad_axes"], [image.name]),
    ]
    nodes = [*before, *graph.node, *after]
    del graph.node[:]
    graph.node.extend(nodes)

    def any_size(value):  # (batch, C, height, width): the exporter's "32*s1"-style dims no longer hold
        channels = value.type.tensor_type.shape.dim[1].dim_value
        return helper.make_tensor_value_info(value.name, TensorProto.FLOAT, ["batch", channels, "height", "width"])

    graph.input[0].CopyFrom(any_size(sample))
    graph.output[0].CopyFrom(any_size(image))
    del graph.value_info[:]  # inner shapes were derived from the multiple-only input; onnxruntime infers them again


def _finish_file(path: Path, metadata: dict[str, str]) -> None:
    """Add the padding, the metadata and a description to the exported file."""
    import onnx

    proto = onnx.load(str(path))
    multiple = int(metadata[metadata_key("size_multiple")])
    _pad_in_graph(proto, multiple)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "ghibligan"
    proto.doc_string = (
        f"{metadata[metadata_key('class_name')]} exported by ghibligan: images (B, C, H, W) in [-1, 1] -> [-1, 1], "
        f"any H and W: the graph pads them to multiples of {multiple} (mirroring) and crops the output back."
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _checkpoint_digest(pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs) -> str:
    """sha256 of a checkpoint's config.json and model.safetensors (and the export format): names its cached export."""
    from huggingface_hub import hf_hub_download

    digest = hashlib.sha256(f"ghibligan-onnx-{EXPORT_FORMAT}-{torch.__version__}".encode())
    for filename in (constants.CONFIG_NAME, constants.SAFETENSORS_SINGLE_FILE):
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir():
            file = folder / filename
        else:
            file = Path(hf_hub_download(repo_id=str(pretrained_model_name_or_path), filename=filename, **hub_kwargs))
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def onnx_cache_dir() -> Path:
    """Where exports made on the fly are kept: ``$HF_HOME/ghibligan/onnx``."""
    return Path(constants.HF_HOME) / "ghibligan" / "onnx"


def exported_checkpoint(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> Path:
    """The ONNX export of a checkpoint that has no ``model.onnx``: made once from its weights, then cached.

    The cache entry is named by a hash of the checkpoint's config and weights, so a changed checkpoint is re-exported.
    ``kwargs`` go to `load_generator` (``revision``, ``cache_dir``, ``token``, ``local_files_only``, ...).
    """
    from .models.auto import load_generator

    hub_keys = ("revision", "cache_dir", "token", "local_files_only", "force_download")
    digest = _checkpoint_digest(pretrained_model_name_or_path, **{k: v for k, v in kwargs.items() if k in hub_keys})
    path = onnx_cache_dir() / digest / ONNX_FILENAME
    if not path.is_file():
        logger.warning(
            "%s has no %s: exporting one from its weights into %s (once).",
            pretrained_model_name_or_path,
            ONNX_FILENAME,
            path.parent,
        )
        model = load_generator(pretrained_model_name_or_path, **kwargs)
        partial = path.with_name(f"{ONNX_FILENAME}.partial-{os.getpid()}.onnx")
        export_onnx(model, partial)
        os.replace(partial, path)
    return path
