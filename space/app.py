"""ghibligan Space: interactive photo → cartoon with a Gradio Blocks app.

Runs locally, offline, on the model bundled with ghibligan:

    pip install -e ".[space]" && python space/app.py          # http://127.0.0.1:7860

Environment:
    GHIBLIGAN_MODELS       comma-separated extra checkpoints (Hub ids or folders) offered in the model menu
    GHIBLIGAN_MAX_PIXELS   refuse uploads with more pixels than this (default 40 MP); larger photos are tiled
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (Spaces sets these)

API (named endpoint ``/cartoonize``)::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    png_path = client.predict(handle_file("photo.jpg"), "bundled", 1024, 0.0, api_name="/cartoonize")
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import gradio as gr
from PIL import Image

from ghibligan import Cartoonizer, ImageLoadError, load_image
from ghibligan.image_io import resize_to_max_side

BUNDLED = "bundled"
EXAMPLES = Path(__file__).parent / "examples"
MAX_PIXELS = int(os.environ.get("GHIBLIGAN_MAX_PIXELS", 40_000_000))
MAX_FILE_SIZE = "25mb"


def model_choices() -> list[str]:
    extra = [m.strip() for m in os.environ.get("GHIBLIGAN_MODELS", "").split(",") if m.strip()]
    return [BUNDLED, *extra]


@functools.lru_cache(maxsize=4)
def get_cartoonizer(model: str) -> Cartoonizer:
    """Load a model once and keep it: requests reuse it (the cache holds the last four models asked for)."""
    cartoonizer = Cartoonizer.from_pretrained(None if model == BUNDLED else model, dtype="auto")
    cartoonizer.set_progress_bar_config(disable=True)
    return cartoonizer


def _path_of(upload) -> str | None:
    """The uploaded file's path, from the raw payload (preprocess=False: we decode images ourselves)."""
    if upload is None:
        return None
    if isinstance(upload, dict):
        return upload.get("path")
    return getattr(upload, "path", None) or str(upload)


def cartoonize(upload, model: str, max_side: float, smoothing: float) -> Image.Image:
    """Cartoonize one uploaded photo; every failure becomes a message in the page, never a traceback."""
    path = _path_of(upload)
    if not path:
        raise gr.Error("Upload a photo first (or pick an example).")
    try:
        cartoonizer = get_cartoonizer(model or BUNDLED)
    except Exception as error:
        raise gr.Error(f"Could not load the model {model!r}: {error}") from error
    try:
        return cartoonizer(path, max_side=int(max_side), smoothing=float(smoothing) or None, max_pixels=MAX_PIXELS)[0]
    except ImageLoadError as error:  # name the upload, not the server's temporary folder
        message = str(error).replace(str(Path(path).parent) + os.sep, "")
        raise gr.Error(f"That file could not be used as a photo. {message}") from error


def comparison(path: str | None, cartoon: Image.Image | None, max_side: float):
    """(photo, cartoon) at the same size, for the before/after slider (runs only after a successful cartoonize)."""
    if not path or cartoon is None:
        return None
    photo = resize_to_max_side(load_image(path, max_pixels=MAX_PIXELS).rgb, int(max_side))
    return photo.resize(cartoon.size), cartoon.convert("RGB")


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="ghibligan — photo to cartoon") as demo:
        gr.Markdown(
            "# ghibligan\nTurn a photo into a cartoon with a fast image-to-image GAN. The default model is bundled "
            "with ghibligan and distilled from its classical *painterly* toon teacher; add your own Ghibli-style "
            "checkpoint by typing its Hub id in the model box."
        )
        with gr.Row():
            with gr.Column():
                photo = gr.Image(
                    label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"], elem_id="photo"
                )
                model = gr.Dropdown(
                    model_choices(), value=BUNDLED, label="Model", allow_custom_value=True,
                    info="'bundled', or a Hub repo id / local folder of a ghibligan generator",
                )  # fmt: skip
                max_side = gr.Slider(256, 2048, value=1024, step=64, label="Output size (longer side, pixels)")
                smoothing = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Edge-preserving smoothing")
                run = gr.Button("Cartoonize", variant="primary", elem_id="run")
            with gr.Column():
                result = gr.Image(
                    label="Cartoon (full resolution PNG)", type="pil", format="png", buttons=["download"],
                    elem_id="result", interactive=False,
                )  # fmt: skip
                before_after = gr.ImageSlider(
                    label="Before / after", type="pil", format="png", interactive=False, elem_id="before_after"
                )
        event = run.click(
            cartoonize, [photo, model, max_side, smoothing], result, api_name="cartoonize", preprocess=False
        )
        event.success(comparison, [photo, result, max_side], before_after, api_visibility="private")
        gr.Examples(
            examples=[[str(p)] for p in sorted(EXAMPLES.glob("*.jpg"))],
            inputs=[photo],
            label="Examples (CC0 / public domain, see examples/SOURCES.md) — click one, then Cartoonize",
        )
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the ghibligan Space locally.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="interface to bind")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)), help="port")
    parser.add_argument("--concurrency", type=int, default=1, help="requests processed at once (1: one per CPU pair)")
    parser.add_argument("--max_queue", type=int, default=32, help="requests allowed to wait in the queue (32)")
    args = parser.parse_args()
    get_cartoonizer(BUNDLED)  # load at start: the first visitor does not wait, and a broken install fails now
    demo = build_demo().queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_SIZE, show_error=True)


if __name__ == "__main__":
    main()
