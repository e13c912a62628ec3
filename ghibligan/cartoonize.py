"""Cartoonize files on disk: images, folders of them, globs and videos — what ``ghibligan cartoonize`` runs.

A bad file never stops the run: it is reported by name and the rest are processed. Inputs are never overwritten; an
existing output is kept unless ``overwrite`` is set. Each output is written to a temporary name and renamed into
place, so an interrupted run leaves no half-written files.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .image_io import IMAGE_EXTENSIONS, ImageLoadError
from .pipeline import Cartoonizer

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


@dataclass
class Job:
    source: Path
    target: Path

    @property
    def is_video(self) -> bool:
        return self.source.suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class Report:
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.written)} written, {len(self.skipped)} skipped, {len(self.failed)} failed"]
        lines += [f"  skipped: {reason}" for reason in self.skipped]
        lines += [f"  failed: {reason}" for reason in self.failed]
        return "\n".join(lines)


def _expand(pattern: str, recursive: bool) -> list[tuple[Path, Path]]:
    """One input argument → (file, path relative to the output folder) pairs."""
    path = Path(pattern)
    if path.is_dir():
        files = path.rglob("*") if recursive else path.glob("*")
        media = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
        return sorted((f, f.relative_to(path)) for f in files if f.is_file() and f.suffix.lower() in media)
    if path.exists() or not glob.has_magic(pattern):
        return [(path, Path(path.name))]
    return [(Path(match), Path(Path(match).name)) for match in sorted(glob.glob(pattern, recursive=recursive))]


def plan_jobs(
    inputs: list[str], output: str | os.PathLike, image_format: str = "png", recursive: bool = False
) -> tuple[list[Job], list[str]]:
    """Map inputs to output paths. Returns the jobs and the inputs that cannot be planned (with reasons)."""
    output = Path(output)
    problems: list[str] = []
    expanded: list[tuple[Path, Path]] = []
    for pattern in inputs:
        found = _expand(pattern, recursive)
        if not found:
            problems.append(f"{pattern}: no files match")
        expanded += found
    single_file = len(inputs) == 1 and len(expanded) == 1 and not Path(inputs[0]).is_dir()
    if single_file and output.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
        return [Job(expanded[0][0], output)], problems

    jobs, targets = [], {}
    for source, relative in expanded:
        is_video = source.suffix.lower() in VIDEO_EXTENSIONS
        target = output / relative.with_suffix(relative.suffix if is_video else f".{image_format}")
        key = target.resolve()
        if key in targets:
            problems.append(f"{source}: its output {target} is also the output of {targets[key]}")
            continue
        targets[key] = source
        jobs.append(Job(source, target))
    return jobs, problems


def _write_video(cartoonizer: Cartoonizer, job: Job, tmp: Path, batch_size: int, **kwargs) -> None:
    capture = cv2.VideoCapture(str(job.source))
    if not capture.isOpened():
        raise ImageLoadError(f"{job.source}: not a video that OpenCV can read.")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    frames_done = 0
    try:
        with tqdm(total=total, desc=job.source.name, unit="frame", leave=False) as progress:
            while True:
                frames = []
                while len(frames) < batch_size:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                if not frames:
                    break
                for cartoon in cartoonizer(frames, batch_size=batch_size, **kwargs):
                    writer.write(cv2.cvtColor(_video_frame(cartoon, width, height), cv2.COLOR_RGB2BGR))
                frames_done += len(frames)
                progress.update(len(frames))
    finally:
        capture.release()
        writer.release()
    if frames_done == 0:
        raise ImageLoadError(f"{job.source}: the video has no readable frames.")


def _video_frame(cartoon: Image.Image, width: int, height: int) -> np.ndarray:
    if cartoon.size != (width, height):  # max_side was used: the video keeps its size
        cartoon = cartoon.resize((width, height))
    return np.asarray(cartoon.convert("RGB"))


def cartoonize_files(
    cartoonizer: Cartoonizer,
    jobs: list[Job],
    overwrite: bool = False,
    batch_size: int = 4,
    **kwargs,
) -> Report:
    """Run every job, collecting what was written, skipped and failed. ``kwargs`` go to `Cartoonizer.__call__`."""
    report = Report()
    sources = {job.source.resolve() for job in jobs}
    for job in tqdm(jobs, desc="cartoonize", unit="file", disable=len(jobs) < 2):
        if job.target.resolve() in sources:
            report.failed.append(f"{job.source}: refusing to write over an input file ({job.target})")
            continue
        if job.target.exists() and not overwrite:
            report.skipped.append(f"{job.target} exists (`overwrite=True`, or --overwrite, replaces it)")
            continue
        job.target.parent.mkdir(parents=True, exist_ok=True)
        tmp = job.target.with_name(f".tmp-{job.target.name}")
        try:
            if job.is_video:
                _write_video(cartoonizer, job, tmp, batch_size=batch_size, **kwargs)
            else:
                cartoon = cartoonizer(job.source, batch_size=batch_size, **kwargs)[0]
                if job.target.suffix.lower() in (".jpg", ".jpeg", ".bmp"):
                    cartoon = cartoon.convert("RGB")  # no alpha in these formats
                cartoon.save(tmp)
            os.replace(tmp, job.target)
            report.written.append(job.target)
        except ImageLoadError as error:
            report.failed.append(str(error))
        finally:
            tmp.unlink(missing_ok=True)
    return report
