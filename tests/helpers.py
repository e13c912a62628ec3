"""Images and checkpoints that tests make for themselves."""

import shutil
import signal
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from huggingface_hub import constants
from PIL import Image

from ghibligan import ResNetGenerator, UNetGenerator


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like uint8 RGB array (gradients + blobs + a little noise), not flat noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / max(width, 1), y / max(height, 1), 0.5 + 0.5 * np.sin(x / 17.0 + y / 23.0)], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, max(width, height) / 3 + 1)
        color = rng.uniform(0, 1, size=3)
        mask = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
        image[mask] = 0.6 * image[mask] + 0.4 * color
    image += rng.normal(0, 0.02, size=image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def underexposed(rgb: np.ndarray, stops: float) -> np.ndarray:
    """A uint8 RGB photo as if taken ``stops`` under: its linear light times 2**-stops (sRGB transfer function)."""
    from ghibligan.exposure import to_linear, to_srgb

    return np.round(to_srgb(to_linear(rgb / 255.0) * 2.0**-stops) * 255).astype(np.uint8)


def save_tiny_unet(path: Path, **kwargs) -> Path:
    UNetGenerator(**{"num_downs": 5, "ngf": 8, **kwargs}).save_pretrained(path)
    return path


def save_tiny_resnet(path: Path, **kwargs) -> Path:
    ResNetGenerator(**{"ngf": 8, "n_blocks": 1, **kwargs}).save_pretrained(path)
    return path


def write_png_with_huge_header(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG whose header claims ``width`` × ``height`` pixels: a decompression bomb's calling card."""
    Image.new("RGB", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def write_broken_files(folder: Path) -> list[Path]:
    """Zero bytes, text named .png, a truncated JPEG, a bomb header. Returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("this is not an image")
    truncated = folder / "truncated.jpg"
    Image.fromarray(photo_like(64, 48)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:300])
    bomb = write_png_with_huge_header(folder / "bomb.png")
    return [empty, text, truncated, bomb]


STYLES = ["ghibli", "toon", "painterly"]


def save_tiny_style_model(
    path: Path,
    styles: list[str] = STYLES,
    seed: int = 0,
    scale: float = 0.3,
    work_sides: dict | None = None,
    exposure_targets: dict | None = None,
    contour_lines: dict | None = None,
    joint_upsampling: dict | None = None,
) -> Path:
    """A tiny `GuidedFilterGenerator` with random weights. Its per-style tables and output layers start at zero (every
    style the same, the output close to the photo); here they are random too, so styles differ."""
    import torch

    from ghibligan.models.guided import GuidedFilterGenerator

    torch.manual_seed(seed)
    model = GuidedFilterGenerator(
        styles=styles,
        channels=4,
        num_levels=2,
        num_blocks=1,
        tone_channels=8,
        work_sides=work_sides,
        exposure_targets=exposure_targets,
        contour_lines=contour_lines,
        joint_upsampling=joint_upsampling,
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, scale)
    model.save_pretrained(path)
    return path


def put_in_hub_cache(folder: Path, repo_id: str) -> None:
    """Lay out `folder` as the HF cache holds a downloaded model repo, so hf_hub_download finds it offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    (repo_cache / "refs").mkdir(parents=True, exist_ok=True)
    (repo_cache / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo_cache / "snapshots" / commit, dirs_exist_ok=True)


def write_video(path: Path, frames: int = 10, size: tuple[int, int] = (64, 48), fourcc: str = "mp4v") -> Path:
    """A short 12 fps clip of photo-like frames that pan sideways."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 12.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.roll(photo_like(*size, seed=i % 3), 3 * i, axis=1))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames


def default_ctrl_c() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: Ctrl-C restored to its default. A suite started in
    the background by a non-interactive shell (``bash .ci/run &``) inherits SIGINT ignored, and Python then installs
    no KeyboardInterrupt handler, so the child would ignore the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
