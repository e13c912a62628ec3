"""`OnnxGenerator`: a generator exported by `ghibligan.onnx_export`, run by onnxruntime, called like the torch model.

It needs only numpy and onnxruntime (the ``onnx`` extra); the file itself pads to the network's ``size_multiple`` and
crops back, as the PyTorch models do inside, so any image size works. It takes numpy arrays, or torch tensors when
torch is there (then it returns a tensor), so `Cartoonizer` can use it in place of the torch generator:

    ```py
    >>> from ghibligan import Cartoonizer
    >>> cartoonizer = Cartoonizer.from_pretrained("my-unet", backend="onnxruntime")  # my-unet/model.onnx
    >>> cartoons = cartoonizer(["photo.jpg"])
    ```
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

ONNX_FILENAME = "model.onnx"
_HUB_KEYS = ("revision", "cache_dir", "token", "local_files_only", "force_download")

MAX_STYLES = 64  # as `ghibligan.models.limits.MAX_STYLES` (this module does not import torch)


def metadata_key(name: str) -> str:
    """Key of a ghibligan entry in the ONNX file's ``metadata_props``."""
    return f"ghibligan.{name}"


def _is_float32(dtype: Any) -> bool:
    return dtype is None or str(dtype) in ("float32", "torch.float32") or dtype is np.float32


def _providers_for(device: Any) -> list:
    """onnxruntime execution providers for a device given as in torch (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
    import onnxruntime as ort

    name = str(device if device is not None else "cpu")
    kind, _, index = name.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(
                f"device={name!r} needs onnxruntime's CUDAExecutionProvider, which this install lacks "
                f"(it has {ort.get_available_providers()}): pip install onnxruntime-gpu, or use device='cpu'."
            )
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    raise ValueError(f"The onnxruntime backend runs on 'cpu' or 'cuda[:N]', got device={name!r}.")


class OnnxGenerator:
    r"""An exported ghibligan generator run by onnxruntime: (B, C, H, W) in [-1, 1] → (B, C', H, W), any size.

    Args:
        path (`str` or `os.PathLike`): an ``.onnx`` file written by `ghibligan.onnx_export.export_onnx`.
        device (`str`, *optional*, defaults to `"cpu"`): ``"cpu"`` or ``"cuda[:N]"`` (needs onnxruntime-gpu).
        num_threads (`int`, *optional*): intra-op threads; defaults to onnxruntime's choice (the physical cores).
        session_options (`onnxruntime.SessionOptions`, *optional*): replaces the tuned defaults entirely (e.g. to
            set ``session.intra_op.allow_spinning`` to ``"0"`` on an oversubscribed machine).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        session_options: Any = None,
    ):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"The onnxruntime backend needs onnxruntime: pip install 'ghibligan[onnx]' ({error})"
            ) from error
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file {str(self.path)!r} does not exist.")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"`num_threads` must be an integer >= 1 or None, got {num_threads!r}.")
        self.num_threads = num_threads
        self.session_options = session_options
        self.device = "cpu"
        self.session = self._make_session(device)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if metadata_key("size_multiple") not in metadata:
            raise ValueError(
                f"{str(self.path)!r} carries no ghibligan metadata ({metadata_key('size_multiple')}): it was not "
                f"written by ghibligan's exporter. Export it with `ghibligan export-onnx --model ID_OR_DIR -o FILE`."
            )
        self.size_multiple = int(metadata[metadata_key("size_multiple")])
        self.class_name = metadata.get(metadata_key("class_name"), "")
        # the file may come from anywhere: its JSON metadata must have the shapes the pipeline reads, or a ValueError
        self.config: dict = json.loads(metadata.get(metadata_key("config"), "{}"))
        self.styles: list[str] | None = json.loads(metadata.get(metadata_key("styles"), "null"))
        if not isinstance(self.config, dict):
            raise ValueError(f"{str(self.path)!r}: its {metadata_key('config')} metadata is not a JSON object.")
        if self.styles is not None and (
            not isinstance(self.styles, list)
            or not 0 < len(self.styles) <= MAX_STYLES
            or not all(isinstance(name, str) and 0 < len(name) <= 64 for name in self.styles)
        ):
            raise ValueError(
                f"{str(self.path)!r}: its {metadata_key('styles')} metadata must be a list of 1 to {MAX_STYLES} style "
                "names of 1 to 64 characters."
            )
        self.work_sides = self.config.get("work_sides")  # the style → long side the pipeline draws at (it checks them)
        self.exposure_targets = self.config.get("exposure_targets")  # style → exposure target (the pipeline checks)
        self.contour_lines = self.config.get("contour_lines")  # style → line settings (the pipeline checks)
        self.joint_upsampling = self.config.get("joint_upsampling")  # style → upsampling range σ (the pipeline checks)
        inputs = self.session.get_inputs()
        self.input_names = [node.name for node in inputs]
        self.in_channels = int(inputs[0].shape[1]) if isinstance(inputs[0].shape[1], int) else 3

    def _make_session(self, device: Any):
        import onnxruntime as ort

        providers = _providers_for(device)
        options = self.session_options
        if options is None:
            options = ort.SessionOptions()
            # Measured on 2 cores (BENCHMARKS.md, "ONNX"): the CPU memory arena (on: off is 2× slower) and full graph
            # optimization (layout transforms, Conv+activation fusion) matter for speed; the memory pattern only
            # costs memory (a 1024² call adds 693 MB with it, 397 MB without, at the same speed). Spinning keeps
            # onnxruntime's default: it helps on an idle machine and hurts on an oversubscribed one.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.enable_cpu_mem_arena = True
            options.enable_mem_pattern = False
            options.inter_op_num_threads = 1  # one graph branch at a time: the model is a chain
            if self.num_threads is not None:
                options.intra_op_num_threads = self.num_threads
        session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.device = str(device)
        return session

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *, filename: str = ONNX_FILENAME, **kwargs
    ) -> OnnxGenerator:
        """Load ``model.onnx`` from an ``.onnx`` file, a checkpoint folder, or a Hub repo (via `hf_hub_download`).

        ``kwargs``: ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``force_download`` for the Hub, the
        rest (``device``, ``num_threads``, ``session_options``) for `OnnxGenerator`.
        """
        hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KEYS if key in kwargs}
        path = Path(pretrained_model_name_or_path)
        if path.is_file():
            return cls(path, **kwargs)
        if path.is_dir():
            if not (path / filename).is_file():
                raise FileNotFoundError(
                    f"{str(path)!r} has no {filename}. Export one next to its weights with "
                    f"`ghibligan export-onnx --model {path} -o {path / filename}`."
                )
            return cls(path / filename, **kwargs)
        from huggingface_hub import hf_hub_download

        return cls(hf_hub_download(str(pretrained_model_name_or_path), filename, **hub_kwargs), **kwargs)

    def to(self, device: Any = None, dtype: Any = None, memory_format: Any = None) -> OnnxGenerator:
        """Run on ``device`` (``"cpu"`` or ``"cuda[:N]"``); the graph is float32, so ``dtype`` must be float32."""
        if not _is_float32(dtype):
            raise ValueError(
                f"The onnxruntime backend runs the exported float32 graph; got dtype={dtype!r}. Use dtype='float32' "
                f"(or 'auto'), or the torch backend for bfloat16 / float16."
            )
        if device is not None and str(device) != self.device:
            self.session = self._make_session(device)
        return self

    def eval(self) -> OnnxGenerator:
        """No-op, for the torch generator's interface: an exported graph is always in inference mode."""
        return self

    def _style_feed(self, style: Any, batch: int, styles: list[str]) -> np.ndarray:
        if style is None:
            return np.zeros(batch, dtype=np.int64)  # the first style
        if hasattr(style, "detach"):
            style = style.detach().cpu().numpy()
        style = np.asarray(style, dtype=np.int64).reshape(-1)
        if style.size == 1:
            style = np.repeat(style, batch)
        if style.shape != (batch,) or style.min() < 0 or style.max() >= len(styles):
            raise ValueError(
                f"`style` must be indices in [0, {len(styles)}) of {styles}, one per image (batch {batch}), "
                f"got {style.tolist()}."
            )
        return style

    def __call__(self, sample: Any, style: Any = None) -> Any:
        """(B, C, H, W) float array or tensor in [-1, 1] → the same type, float32, on the CPU.

        ``style``, for a style generator only: indices into `styles`, one per image or one for all (int, array or
        LongTensor); ``None`` picks the first style.
        """
        is_tensor = not isinstance(sample, np.ndarray)
        array = sample.detach().cpu().float().numpy() if is_tensor else sample
        if array.ndim != 4 or array.shape[1] != self.in_channels:
            raise ValueError(f"Expected a (B, {self.in_channels}, H, W) batch, got shape {tuple(array.shape)}.")
        feeds = {self.input_names[0]: np.ascontiguousarray(array, dtype=np.float32)}
        if self.styles is not None:
            feeds[self.input_names[1]] = self._style_feed(style, array.shape[0], self.styles)
        elif style is not None:
            raise ValueError(f"`style` was given, but {self.class_name or 'this model'} has no styles.")
        output = self.session.run(None, feeds)[0]
        if is_tensor:
            import torch

            return torch.from_numpy(np.ascontiguousarray(output))
        return output

    def __repr__(self) -> str:
        return f"OnnxGenerator({self.class_name}, {str(self.path)!r}, device={self.device!r})"


def load_onnx_generator(pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> OnnxGenerator:
    """`OnnxGenerator.from_pretrained`, or, for a checkpoint without ``model.onnx``, an export of its weights made once
    and cached (needs torch; see `ghibligan.onnx_export.exported_checkpoint`)."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return OnnxGenerator.from_pretrained(pretrained_model_name_or_path, **kwargs)
    except (FileNotFoundError, EntryNotFoundError) as error:
        path = Path(pretrained_model_name_or_path)
        if path.is_file() or (path.is_dir() and not (path / "config.json").is_file()):
            raise  # not a checkpoint: nothing to export from
        missing = error
    from .onnx_export import exported_checkpoint

    hub_kwargs = {key: kwargs.pop(key) for key in _HUB_KEYS if key in kwargs}
    try:
        exported = exported_checkpoint(pretrained_model_name_or_path, **hub_kwargs)
    except ImportError as error:
        raise ImportError(f"{missing} Exporting it needs torch and onnxscript ({error}).") from error
    return OnnxGenerator(exported, **kwargs)
