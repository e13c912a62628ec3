"""ghibligan Space: interactive photo → cartoon with a Gradio Blocks app, hardened for strangers.

Runs locally, offline, on the model bundled with ghibligan:

    pip install -e ".[space]" && python space/app.py          # http://127.0.0.1:7860

The operator decides what is served; visitors only choose from that list and every input is checked on the server:

    GHIBLIGAN_MODELS       comma-separated models this Space serves, e.g. "bundled,you/ghibli-unet" (default
                           "bundled"): Hub ids or the operator's folders. Loaded once at start, in the background.
    GHIBLIGAN_MAX_PIXELS   refuse photos with more pixels than this (default 40 MP)
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (Spaces sets these)

API (named endpoint ``/cartoonize``)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    png_path = client.predict(handle_file("photo.jpg"), "bundled", 1024, 0.0, "", False, api_name="/cartoonize")

The fifth argument, the style, is one of the chosen model's styles, or "" (or left out) for its default: ``ghibli``
when it has it, else its first; a model without styles takes only "". The last, "Crisp levels" (or left out: False),
sets the bundled model's posterizer to full strength: flat levels with sharp borders; a model without a
posterizer takes only False. gradio_client fills in left-out arguments; a plain HTTP call (``POST
/gradio_api/call/cartoonize``) sends all six.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from ghibligan import Cartoonizer, ImageLoadError, load_image
from ghibligan.contour_lines import apply_ink, draw_contour_lines
from ghibligan.image_io import resize_to_max_side
from ghibligan.models.limits import DEFAULT_MAX_PARAMETERS, ResourceLimitError
from ghibligan.upsampling import joint_bilateral_upsample

BUNDLED = "bundled"
EXAMPLES = Path(__file__).parent / "examples"
MAX_PIXELS = int(os.environ.get("GHIBLIGAN_MAX_PIXELS", 40_000_000))
MAX_FILE_MB = 25
MIN_SIDE, MAX_SIDE, DEFAULT_SIDE = 256, 2048, 1024
MAX_ACTIVATION_BYTES = 6 * 2**30  # one generator pass; a 2048² output of the bundled model needs ~1.3 GiB
LOAD_TIMEOUT_S = 600.0  # a model not loaded by then is reported as failed
OUTPUT_MAX_AGE_S = 600  # our PNGs are copied into gradio's cache (cleared after an hour); ours go after 10 minutes
OUTPUTS = Path(tempfile.gettempdir()) / "ghibligan-space-outputs"
DEFAULT_STYLE = "ghibli"  # the style pre-selected for a model that has it

logger = logging.getLogger("ghibligan.space")


def allowed_models() -> list[str]:
    """The models the operator serves, from ``GHIBLIGAN_MODELS`` (default: the bundled one)."""
    names = [name.strip() for name in os.environ.get("GHIBLIGAN_MODELS", BUNDLED).split(",") if name.strip()]
    return list(dict.fromkeys(names)) or [BUNDLED]


def refuse(message: str, reason: str) -> gr.Error:
    """A message for the visitor, and one log line for the operator (no traceback: nothing is broken)."""
    logger.warning("refused: %s", reason)
    return gr.Error(message, print_exception=False)


class ModelRegistry:
    """The allow-listed models, each loaded once in a background thread, outside the request queue.

    Requests never load anything: they get the model, or a message that it is still loading or unavailable. A load
    that fails or takes longer than ``timeout`` is logged once and its failure is kept.
    """

    def __init__(self, names: list[str], timeout: float = LOAD_TIMEOUT_S):
        self.names = names
        self.timeout = timeout
        self._models: dict[str, Cartoonizer] = {}
        self._failures: dict[str, str] = {}
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def load(self, name: str) -> None:
        """Load ``name`` now (the caller's thread); a failure is recorded and logged, not raised."""
        start = time.monotonic()
        try:
            cartoonizer = Cartoonizer.from_pretrained(
                None if name == BUNDLED else name, dtype="auto", max_parameters=DEFAULT_MAX_PARAMETERS
            )
            cartoonizer.set_progress_bar_config(disable=True)
            # one small image through it now, so the first visitor waits for neither oneDNN's set-up nor the fused
            # CPU kernels' compile (seconds on a fresh install, then cached on disk)
            cartoonizer.generate_uint8(np.zeros((1, 64, 64, 3), np.uint8))
            if cartoonizer.contour_lines:  # and the contour lines' kernels, for the styles that draw them
                warm = np.zeros((64, 64, 3), np.uint8)
                apply_ink(warm, draw_contour_lines(warm, next(iter(cartoonizer.contour_lines.values()))), 0.5)
            if cartoonizer.joint_upsampling:  # and the edge-aware upsampling's, for the styles drawn with it
                read_only = np.zeros((64, 64, 3), np.uint8)
                read_only.flags.writeable = False  # a guide read from a PIL image is: numba compiles both kinds
                low = np.zeros((32, 32, 3), np.uint8)
                for guide in (np.zeros((64, 64, 3), np.uint8), read_only):
                    joint_bilateral_upsample(low, low, guide, 24)
        except Exception as error:  # any failure: kept and reported once, the Space keeps serving the others
            self._fail(name, f"{type(error).__name__}: {error}")
            return
        with self._lock:
            if name in self._failures:  # gave up on it already (timeout): keep the answer visitors were given
                return
            self._models[name] = cartoonizer
        logger.info("model %r loaded in %.1f s", name, time.monotonic() - start)

    def failure(self, name: str) -> str | None:
        """Why ``name`` could not be loaded, or None."""
        return self._failures.get(name)

    def load_in_background(self, names: list[str]) -> threading.Thread:
        thread = threading.Thread(target=lambda: [self.load(name) for name in names], daemon=True, name="models")
        thread.start()
        return thread

    def _fail(self, name: str, reason: str) -> None:
        with self._lock:
            if name in self._failures or name in self._models:
                return
            self._failures[name] = reason
        logger.error("model %r is unavailable: %s", name, reason.replace("\n", " ")[:500])

    def styles(self, name: object) -> list[str]:
        """The styles of ``name`` if it is loaded (``[]`` for a model without styles, or one not loaded yet)."""
        model = self._models.get(name) if isinstance(name, str) else None
        return model.styles if model is not None else []

    def can_posterize(self, name: object) -> bool:
        """Whether ``name`` is loaded and has a posterizer (the bundled model has)."""
        model = self._models.get(name) if isinstance(name, str) else None
        return model is not None and model.can_posterize

    def get(self, name: object) -> Cartoonizer:
        """The loaded model ``name``, or a `gr.Error` for the visitor."""
        if not isinstance(name, str) or name not in self.names:
            raise refuse(
                f"Choose one of the models this Space serves: {', '.join(self.names)}.",
                f"model {str(name)[:100]!r} is not in the allow-list",
            )
        if name not in self._models and name not in self._failures:
            if time.monotonic() - self._started > self.timeout:
                self._fail(name, f"not loaded after {self.timeout:.0f} s")
            else:
                raise refuse(f"The model {name!r} is still loading. Try again in a minute.", f"{name!r} loading")
        if name in self._failures:
            raise refuse(f"The model {name!r} is not available right now. Choose another one.", f"{name!r} failed")
        return self._models[name]


def read_side(value: object) -> int:
    """The output size, a whole number of pixels in [MIN_SIDE, MAX_SIDE], or a `gr.Error`."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and float(value).is_integer() and MIN_SIDE <= value <= MAX_SIDE:
        return int(value)
    raise refuse(
        f"Output size must be a whole number of pixels from {MIN_SIDE} to {MAX_SIDE}; got {str(value)[:20]!r}.",
        f"max_side {str(value)[:40]!r}",
    )


def read_smoothing(value: object) -> float:
    """Smoothing strength in [0, 1], or a `gr.Error`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    raise refuse(f"Smoothing must be a number from 0 to 1; got {str(value)[:20]!r}.", f"smoothing {str(value)[:40]!r}")


def read_crisp(value: object, model: str, can_posterize: bool) -> float | None:
    """The posterizer strength for "Crisp levels": 1.0 when ticked, None (the model's own) when not; or a `gr.Error`."""
    if value is None or value is False:
        return None
    if value is not True:
        raise refuse(f"Crisp levels must be true or false; got {str(value)[:20]!r}.", f"crisp {str(value)[:40]!r}")
    if not can_posterize:
        raise refuse(
            f"The model {model!r} has no luminance levels to make crisp; untick Crisp levels.",
            f"crisp levels for {model!r}, which has no posterizer",
        )
    return 1.0


def read_upload(upload: object) -> tuple[Path, str]:
    """(server path, the name the visitor gave the file) of an uploaded photo, checked for size and pixels."""
    path = upload.get("path") if isinstance(upload, dict) else None
    if not path:
        raise refuse("Upload a photo first (or pick an example).", "no photo")
    path = Path(path)
    name = re.sub(r"[^\w.\- ]", "_", str(upload.get("orig_name") or path.name))[-80:]
    if not path.is_file():
        raise refuse("That upload has expired. Upload the photo again.", f"no file behind {name!r}")
    size_mb = path.stat().st_size / 2**20
    if size_mb > MAX_FILE_MB:
        raise refuse(f"{name} is {size_mb:.0f} MB; this Space takes files up to {MAX_FILE_MB} MB.", f"{name!r} too big")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # the header only
                width, height = image.size
    except Image.DecompressionBombError:
        width = height = math.inf
    except Exception:  # not an image: load_image below says what is wrong with it, by name
        return path, name
    if width * height > MAX_PIXELS:
        raise refuse(
            f"{name} is too large ({width}x{height} pixels); this Space takes photos up to "
            f"{MAX_PIXELS / 1e6:.0f} megapixels. Resize it and try again.",
            f"{name!r} is {width}x{height}",
        )
    return path, name


def default_style(styles: list[str]) -> str | None:
    """The style pre-selected for a model: ``ghibli`` when it has it, else its first; None without styles."""
    return DEFAULT_STYLE if DEFAULT_STYLE in styles else (styles[0] if styles else None)


def read_style(value: object, model: str, styles: list[str]) -> str | None:
    """The style to run ``model`` in: one of its ``styles``, or its default for ``""`` / None; or a `gr.Error`."""
    if value is None or value == "":
        return default_style(styles)
    shown = str(value)[:40]
    if not styles:
        raise refuse(
            f"The model {model!r} has no styles; leave the style empty.",
            f"style {shown!r} for {model!r}, which has none",
        )
    if not isinstance(value, str) or value not in styles:
        raise refuse(
            f"Choose one of the styles of the model {model!r}: {', '.join(styles)}; got {shown[:20]!r}.",
            f"style {shown!r} is not one of {model!r}'s",
        )
    return value


def output_path(upload_name: str, style: str | None = None) -> Path:
    """Where to write the result: ``holiday-ghibli.png`` for ``holiday.jpg`` in the style ``ghibli``, else
    ``holiday-cartoon.png``; in a fresh folder, after removing folders older than ``OUTPUT_MAX_AGE_S``."""
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    for folder in OUTPUTS.iterdir():
        if time.time() - folder.stat().st_mtime > OUTPUT_MAX_AGE_S:
            shutil.rmtree(folder, ignore_errors=True)
    stem = re.sub(r"[^\w\-]+", "_", Path(upload_name).stem).strip("_")[:60] or "photo"
    folder = OUTPUTS / uuid.uuid4().hex
    folder.mkdir()
    return folder / f"{stem}-{style or 'cartoon'}.png"


def make_cartoonize(models: ModelRegistry):
    def cartoonize(
        upload, model: str, max_side: float, smoothing: float, style: str | None = "", crisp: bool = False
    ) -> str:
        """Cartoonize one uploaded photo; every refusal is a message for the visitor and one log line."""
        path, name = read_upload(upload)
        side, strength = read_side(max_side), read_smoothing(smoothing)
        cartoonizer = models.get(model)
        style = read_style(style, model, cartoonizer.styles)
        posterize = read_crisp(crisp, model, cartoonizer.can_posterize)
        try:
            cartoon = cartoonizer(
                path, style=style, max_side=side, smoothing=strength or None, max_pixels=MAX_PIXELS,
                max_activation_bytes=MAX_ACTIVATION_BYTES, posterize=posterize,
            )[0]  # fmt: skip
        except ImageLoadError as error:  # name the upload, not the server's temporary folder
            detail = str(error).replace(str(path), name)
            raise refuse(f"That file could not be used as a photo. {detail}", detail) from None
        except ResourceLimitError as error:
            raise refuse(
                "This photo is too large for this model at that output size. Choose a smaller output size.",
                str(error),
            ) from None
        destination = output_path(name, style)
        cartoon.save(destination, format="PNG")
        return str(destination)

    return cartoonize


def comparison(upload, cartoon, max_side: float):
    """(photo, cartoon) at the same size, for the before/after slider (runs only after a successful cartoonize)."""
    cartoon_path = cartoon.get("path") if isinstance(cartoon, dict) else None
    if not cartoon_path:
        return None
    path, _ = read_upload(upload)
    side = read_side(max_side)
    result = load_image(cartoon_path, max_pixels=MAX_SIDE * MAX_SIDE).rgb
    photo = resize_to_max_side(load_image(path, max_pixels=MAX_PIXELS).rgb, side)
    return photo.resize(result.size), result


def style_choices(models: ModelRegistry):
    """The style selector for ``model``: its styles, its default selected; hidden for a model without styles. And the
    "Crisp levels" box, unticked, shown only for a model with a posterizer."""

    def choices(model: str) -> tuple[gr.Dropdown, gr.Checkbox]:
        styles = models.styles(model)
        return (
            gr.Dropdown(choices=styles or [("default", "")], value=default_style(styles) or "", visible=bool(styles)),
            gr.Checkbox(value=False, visible=models.can_posterize(model)),
        )

    return choices


def build_demo(models: ModelRegistry) -> gr.Blocks:
    with gr.Blocks(title="ghibligan — photo to cartoon", delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# ghibligan\nTurn a photo into a cartoon with a fast image-to-image GAN. The default model is bundled "
            "with ghibligan: one model, three styles (*ghibli*, *toon*, *painterly*), each distilled from one of its "
            "classical toon teachers."
        )
        with gr.Row():
            with gr.Column():
                photo = gr.Image(
                    label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"], elem_id="photo"
                )
                model = gr.Dropdown(models.names, value=models.names[0], label="Model", allow_custom_value=False)
                # the API schema lists the styles of the models loaded now, and its default is "" (the chosen model's
                # default: an API call that leaves the style out works with every model); the page shows the chosen
                # model's own styles, its default selected (updated on load and on every model change)
                known = list(dict.fromkeys(style for name in models.names for style in models.styles(name)))
                first = models.styles(models.names[0])
                style = gr.Dropdown(
                    [("default", ""), *known], value="", label="Style",
                    allow_custom_value=False, visible=bool(first), elem_id="style",
                )  # fmt: skip
                max_side = gr.Slider(
                    MIN_SIDE, MAX_SIDE, value=DEFAULT_SIDE, step=64, label="Output size (longer side, pixels)"
                )
                smoothing = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Edge-preserving smoothing")
                crisp = gr.Checkbox(
                    value=False, label="Crisp levels", elem_id="crisp", visible=models.can_posterize(models.names[0]),
                    info="Flat luminance levels with sharp borders (bundled toon and painterly: always on)",
                )  # fmt: skip
                run = gr.Button("Cartoonize", variant="primary", elem_id="run")
            with gr.Column():
                result = gr.Image(
                    label="Cartoon (full resolution PNG)", type="filepath", format="png", buttons=["download"],
                    elem_id="result", interactive=False,
                )  # fmt: skip
                before_after = gr.ImageSlider(
                    label="Before / after", type="pil", format="png", interactive=False, elem_id="before_after"
                )
        # preprocess=False: the raw payloads reach the checks above (gradio's would decode the photo first)
        event = run.click(
            make_cartoonize(models), [photo, model, max_side, smoothing, style, crisp], result, api_name="cartoonize",
            preprocess=False,
        )  # fmt: skip
        model.change(style_choices(models), model, [style, crisp], api_visibility="private")
        event.success(comparison, [photo, result, max_side], before_after, api_visibility="private", preprocess=False)
        gr.Examples(
            examples=[[str(p)] for p in sorted(EXAMPLES.glob("*.jpg"))],
            inputs=[photo],
            label="Examples (CC0 / public domain, see examples/SOURCES.md) — click one, then Cartoonize",
        )
        demo.load(style_choices(models), model, [style, crisp], api_visibility="private")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the ghibligan Space locally.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="interface to bind")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)), help="port")
    parser.add_argument("--concurrency", type=int, default=1, help="requests processed at once (1: one per CPU pair)")
    parser.add_argument("--max_queue", type=int, default=32, help="requests allowed to wait in the queue (32)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    models = ModelRegistry(allowed_models())
    if BUNDLED in models.names:  # load at start: the first visitor does not wait, and a broken install fails now
        models.load(BUNDLED)
        if models.failure(BUNDLED):
            raise SystemExit(f"The bundled model could not be loaded: {models.failure(BUNDLED)}")
    models.load_in_background([name for name in models.names if name != BUNDLED])
    demo = build_demo(models).queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=f"{MAX_FILE_MB}mb", show_error=False)


if __name__ == "__main__":
    main()
