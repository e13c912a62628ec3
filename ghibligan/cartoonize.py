"""Cartoonize files on disk: images, folders of them, globs and videos — what ``ghibligan cartoonize`` runs.

A bad file never stops the run: a file that cannot be read, and an output that cannot be written (a read-only folder,
a codec error), are reported by name and the rest are processed. A video that ends before the frame count in its
header (truncated, damaged) is written as far as it reads and reported as partial. Inputs are never overwritten; an
existing output is kept unless ``overwrite`` is set; an output folder inside an input folder is left out of the input.
Each output is written to a temporary name and renamed into place, so an interrupted run leaves no half-written files.

Usage errors are refused by `plan_jobs` before any work, with a `ValueError` naming the argument: an output name whose
extension does not fit the input (a video to ``x.png``), or a video container this OpenCV build cannot write. Videos
are written by OpenCV, which drops audio; when ffmpeg is available (on ``PATH``, or from the ``video`` extra:
``pip install "ghibligan[video]"``), the source's audio is copied into the output (`ffmpeg_executable`).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .background import map_ahead
from .image_io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageLoadError, LoadedImage, load_image
from .pipeline import Cartoonizer

VIDEO_FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG", ".webm": "VP80"}
VIDEO_EXTENSIONS = set(VIDEO_FOURCCS)  # read from folders, and written when `can_write_video` says so
WRITABLE_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class WriteError(OSError):
    """An output could not be written; the message names it and says why."""


@functools.cache
def can_write_video(suffix: str) -> bool:
    """Whether this OpenCV build writes ``suffix`` videos (``VIDEO_FOURCCS``): probed once with a 2-frame clip."""
    fourcc = VIDEO_FOURCCS.get(suffix.lower())
    if fourcc is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / f"probe{suffix.lower()}")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10.0, (32, 32))
        opened = writer.isOpened()
        for value in (0, 255):
            writer.write(np.full((32, 32, 3), value, np.uint8))
        writer.release()
        capture = cv2.VideoCapture(path)
        readable = capture.isOpened() and capture.read()[0]
        capture.release()
    return bool(opened and readable)


def writable_video_extensions() -> list[str]:
    return sorted(suffix for suffix in VIDEO_FOURCCS if can_write_video(suffix))


def ffmpeg_executable() -> str | None:
    """ffmpeg on ``PATH``, else the binary of the optional ``imageio-ffmpeg`` package, else ``None`` (no audio)."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # the package is there but its binary is not (an unsupported platform)
        return None


def _copy_audio(ffmpeg: str, source: Path, video: Path) -> str | None:
    """Put ``source``'s audio tracks into ``video`` (in place), copied as they are or, if the container needs another
    codec, re-encoded to its default. Returns why the audio could not be kept, or ``None`` (also when there is none)."""
    muxed = video.with_name(f".tmp-audio-{video.name}")  # same extension: ffmpeg picks the container from it
    command = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(video), "-i", str(source)]
    command += ["-map", "0:v:0", "-map", "1:a?", "-c:v", "copy", "-shortest"]
    try:
        for audio_codec in (["-c:a", "copy"], []):
            result = subprocess.run([*command, *audio_codec, str(muxed)], capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(muxed, video)
                return None
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.returncode}"
        return f"its audio could not be kept (ffmpeg: {reason})"
    finally:
        muxed.unlink(missing_ok=True)


def check_device(device: str | None) -> None:
    """Refuse a ``device`` that torch does not know or that is not available here, before loading a model.

    Raises:
        ValueError: naming ``device`` and the choices.
    """
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"`--device` {device!r} is not a torch device: use cpu, cuda, cuda:1 or mps.") from error
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise ValueError(f"`--device` {device!r}: no {kind} device is available on this machine; use cpu.")


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
    partial: list[str] = field(default_factory=list)  # written, but without part of the source (frames, audio)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.partial)

    def summary(self) -> str:
        counts = f"{len(self.written)} written, {len(self.skipped)} skipped, {len(self.failed)} failed"
        lines = [counts + (f", {len(self.partial)} partial" if self.partial else "")]
        lines += [f"  partial: {reason}" for reason in self.partial]
        lines += [f"  skipped: {reason}" for reason in self.skipped]
        lines += [f"  failed: {reason}" for reason in self.failed]
        return "\n".join(lines)


def _glob_root(pattern: str) -> Path:
    """The folder a glob searches from: its parts before the first one with a wildcard."""
    parts = Path(pattern).parts
    literal = parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))]
    return Path(*literal) if literal else Path(".")


def _expand(pattern: str, recursive: bool, output: Path) -> list[tuple[Path, Path]]:
    """One input argument → (file, path relative to the output folder) pairs.

    When ``output`` lies inside the folder searched (``-r`` with ``-o IN/out``), its files are left out: a run never
    cartoonizes its own outputs. (``-o IN`` itself is allowed; each input it would overwrite is refused per file.)
    """
    path = Path(pattern)
    if path.exists() or not glob.has_magic(pattern):
        if not path.is_dir():
            return [(path, Path(path.name))]
        files = [f for f in (path.rglob("*") if recursive else path.glob("*")) if f.is_file()]
        found = [(f, f.relative_to(path)) for f in files if f.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS]
        root = path
    else:
        found = [(Path(match), Path(Path(match).name)) for match in glob.glob(pattern, recursive=recursive)]
        root = _glob_root(pattern)
    root, output = root.resolve(), output.resolve()
    if output != root and output.is_relative_to(root):
        found = [(file, relative) for file, relative in found if not file.resolve().is_relative_to(output)]
    return sorted(found)


def _check_output_name(source: Path, output: Path) -> None:
    """A single input written to the file ``output``: the extension must fit the kind of input."""
    if source.suffix.lower() in VIDEO_EXTENSIONS:
        if output.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(
                f"`--output` {str(output)!r} is an image name, but {str(source)!r} is a video: name a video file "
                f"({', '.join(writable_video_extensions())}) or a folder."
            )
        if not can_write_video(output.suffix):
            raise ValueError(
                f"`--output` {str(output)!r}: this OpenCV build cannot write {output.suffix} videos; it writes "
                f"{', '.join(writable_video_extensions())}."
            )
    elif output.suffix.lower() not in WRITABLE_IMAGE_EXTENSIONS:
        raise ValueError(
            f"`--output` {str(output)!r} cannot hold the image {str(source)!r}: name it with one of "
            f"{', '.join(sorted(WRITABLE_IMAGE_EXTENSIONS))}, or a folder."
        )


def plan_jobs(
    inputs: list[str], output: str | os.PathLike, image_format: str = "png", recursive: bool = False
) -> tuple[list[Job], list[str]]:
    """Map inputs to output paths. Returns the jobs and the inputs that cannot be planned (with reasons).

    Files under ``output`` are left out of folder and glob inputs, so a run never cartoonizes its own outputs.

    Raises:
        ValueError: ``output`` or ``image_format`` cannot work for these inputs (e.g. a video to ``x.png``).
    """
    if f".{image_format}".lower() not in WRITABLE_IMAGE_EXTENSIONS:
        raise ValueError(f"`--format` {image_format!r} is not one of {sorted(WRITABLE_IMAGE_EXTENSIONS)}.")
    output = Path(output)
    problems: list[str] = []
    expanded: list[tuple[Path, Path]] = []
    for pattern in inputs:
        found = _expand(pattern, recursive, output)
        if not found:
            problems.append(f"{pattern}: no files match")
        expanded += found
    single_file = len(inputs) == 1 and len(expanded) == 1 and not Path(inputs[0]).is_dir()
    if single_file and output.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS and not output.is_dir():
        _check_output_name(expanded[0][0], output)
        return [Job(expanded[0][0], output)], problems
    if output.exists() and not output.is_dir():
        raise ValueError(f"`--output` {str(output)!r} is a file; give a folder for these inputs.")

    jobs, targets = [], {}
    for source, relative in expanded:
        is_video = source.suffix.lower() in VIDEO_EXTENSIONS
        target = output / relative.with_suffix(relative.suffix if is_video else f".{image_format}")
        if is_video and not can_write_video(target.suffix):
            problems.append(
                f"{source}: this OpenCV build cannot write {target.suffix} videos (it writes "
                f"{', '.join(writable_video_extensions())})"
            )
            continue
        key = target.resolve()
        if key in targets:
            problems.append(f"{source}: its output {target} is also the output of {targets[key]}")
            continue
        targets[key] = source
        jobs.append(Job(source, target))
    return jobs, problems


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT in the calling (main) thread for the block's duration. Threads started inside (FFmpeg's codec
    threads, opened with a capture or writer; our reader and encoder threads) inherit the mask, so a Ctrl-C always
    reaches Python's main thread rather than interrupting a codec thread mid-frame (seen: an FFmpeg assertion and
    an abort instead of a clean exit). A signal that arrives meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _block_sigint_in_thread() -> None:
    """ThreadPoolExecutor initializer: this worker never takes SIGINT (see `_sigint_blocked`)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _write_video(
    cartoonizer: Cartoonizer, job: Job, tmp: Path, batch_size: int, num_workers: int = 2, **kwargs
) -> str | None:
    """Cartoonize ``job.source`` in batches of frames into ``tmp``, with its audio if ffmpeg is there. Returns a note
    if the output lacks part of the source (frames after a truncation, audio ffmpeg could not copy), else ``None``.
    With ``num_workers`` > 0, frames are decoded and encoded in background threads while the generator runs."""
    if not can_write_video(job.target.suffix):
        raise WriteError(f"{job.target}: this OpenCV build cannot write {job.target.suffix} videos.")
    capture = writer = reader = encoder = None
    frames_done = 0
    # Everything opened is closed in the `finally`, also on a Ctrl-C that arrives while a stream opens: SIGINT is
    # blocked then, so its KeyboardInterrupt is raised the moment the block ends, and outside the `try` the capture and
    # the writer were left for the interpreter's shutdown to close (a suspect for an FFmpeg assertion, exit -6 instead
    # of 130, seen once in a loaded CI run of tests/test_cartoonize_faults.py)
    try:
        with _sigint_blocked():  # FFmpeg's decoder threads start here
            capture = cv2.VideoCapture(str(job.source))
        if not capture.isOpened():
            raise ImageLoadError(f"{job.source}: not a video that OpenCV can read.")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        total = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) or None  # from the header: a truncated file keeps it
        fourcc = VIDEO_FOURCCS[job.target.suffix.lower()]
        with _sigint_blocked():  # ... and the encoder's here
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        reader = ThreadPoolExecutor(1, thread_name_prefix="read", initializer=_block_sigint_in_thread)
        encoder = ThreadPoolExecutor(1, thread_name_prefix="write", initializer=_block_sigint_in_thread)
        if not writer.isOpened():
            raise WriteError(f"{job.target}: OpenCV cannot open a {fourcc} video writer at {tmp}.")

        def read_batch(_) -> list[np.ndarray]:
            frames = []
            while len(frames) < batch_size:
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            return frames

        def write_batch(cartoons: list[Image.Image]) -> None:
            for cartoon in cartoons:
                writer.write(cv2.cvtColor(_video_frame(cartoon, width, height), cv2.COLOR_RGB2BGR))

        # One reader thread decodes the next frames and one writer thread encodes the last ones while the generator
        # runs (one each: a capture and a writer are sequential). Both are done before capture and writer close.
        with (
            reader,
            encoder,
            tqdm(total=total, desc=job.source.name, unit="frame", leave=False) as progress,
        ):
            written = None
            for _, batch in map_ahead(read_batch, itertools.count(), reader if num_workers else None, lookahead=2):
                frames = batch.result()
                if not frames:
                    break
                cartoons = cartoonizer(frames, batch_size=batch_size, **kwargs)
                if written is not None:
                    written.result()  # in order; a codec error stops here
                written = encoder.submit(write_batch, cartoons) if num_workers else _done(write_batch(cartoons))
                frames_done += len(frames)
                progress.update(len(frames))
            if written is not None:
                written.result()
    finally:
        # Join the threads again before closing what they use: a Ctrl-C during the `with` block's own join would
        # otherwise release the capture under a read still running (a crash, not an exit).
        for pool in (reader, encoder):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        for stream in (capture, writer):
            if stream is not None:
                stream.release()
    if frames_done == 0:
        raise ImageLoadError(f"{job.source}: the video has no readable frames.")
    written = _frame_count(tmp)
    if written < frames_done:  # OpenCV's writer does not report failed writes (a full disk): check the file
        raise WriteError(f"{job.target}: only {written} of {frames_done} frames could be written.")
    notes = []
    # Headers of some containers estimate the count from the duration: a frame or 1 % less is not a truncation.
    if total is not None and total - frames_done > max(1, total // 100):
        notes.append(f"only {frames_done} of its {total} frames could be read (truncated or damaged)")
    ffmpeg = ffmpeg_executable()
    if ffmpeg is not None and (audio_problem := _copy_audio(ffmpeg, job.source, tmp)):
        notes.append(audio_problem)
    return f"{job.source}: {'; '.join(notes)}" if notes else None


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    capture.release()
    return max(0, count)


def _video_frame(cartoon: Image.Image, width: int, height: int) -> np.ndarray:
    if cartoon.size != (width, height):  # max_side was used: the video keeps its size
        cartoon = cartoon.resize((width, height))
    return np.asarray(cartoon.convert("RGB"))


def _remove_temporary(tmp: Path) -> str | None:
    """Remove ``tmp`` if it is there; a failure (a read-only mount) is returned as a message, not raised."""
    try:
        if os.path.lexists(tmp):
            tmp.unlink()
    except OSError as error:
        return f"the temporary file {tmp} could not be removed ({error})"
    return None


def _done(value=None) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _save_image(cartoon: Image.Image, job: Job) -> str | None:
    """Write ``cartoon`` to a temporary name beside ``job.target`` and rename it into place; returns why it failed
    (the write, or removing the temporary file after a failed one), or ``None``."""
    tmp = job.target.with_name(f".tmp-{job.target.name}")
    failure = None
    try:
        if job.target.suffix.lower() in (".jpg", ".jpeg", ".bmp"):
            cartoon = cartoon.convert("RGB")  # no alpha in these formats
        cartoon.save(tmp)
        os.replace(tmp, job.target)
    except (OSError, ValueError) as error:  # permissions, read-only mounts, full disks, encoder errors
        failure = f"{job.source}: could not write {job.target} ({error})"
    finally:
        cleanup = _remove_temporary(tmp)  # also on Ctrl-C
    return "; ".join(message for message in (failure, cleanup) if message) or None


def _cartoonize_images(
    cartoonizer: Cartoonizer,
    jobs: list[Job],
    report: Report,
    batch_size: int,
    num_workers: int,
    max_pixels: int | None,
    **kwargs,
) -> None:
    """Image jobs in batches of ``batch_size`` (equal sizes share a generator pass), the next files decoded and the
    previous cartoons encoded by ``num_workers`` threads meanwhile; results reported in the order of ``jobs``."""

    def decode(job: Job) -> LoadedImage:
        job.target.parent.mkdir(parents=True, exist_ok=True)  # here, so a folder that can't be made fails this job
        return load_image(job.source, max_pixels=max_pixels)

    pool = (
        ThreadPoolExecutor(num_workers, thread_name_prefix="io", initializer=_block_sigint_in_thread)
        if num_workers
        else None
    )
    saving: deque[tuple[Job, Future]] = deque()

    def collect(wait: bool) -> None:
        while saving and (wait or saving[0][1].done()):
            job, future = saving.popleft()
            failure = future.result()
            if failure:
                report.failed.append(failure)
            else:
                report.written.append(job.target)

    decoded = map_ahead(decode, jobs, pool, lookahead=max(batch_size, 2 * num_workers))
    try:
        with tqdm(total=len(jobs), desc="cartoonize", unit="file", disable=len(jobs) < 2) as progress:
            for chunk in iter(lambda: list(itertools.islice(decoded, batch_size)), []):
                ready = []
                for job, future in chunk:
                    try:
                        ready.append((job, future.result()))
                    except ImageLoadError as error:
                        report.failed.append(str(error))
                    except OSError as error:
                        report.failed.append(f"{job.source}: could not write {job.target} ({error})")
                cartoons = cartoonizer([image for _, image in ready], batch_size=batch_size, **kwargs) if ready else []
                for (job, _), cartoon in zip(ready, cartoons, strict=True):
                    saving.append(
                        (job, pool.submit(_save_image, cartoon, job) if pool else _done(_save_image(cartoon, job)))
                    )
                collect(wait=False)
                progress.update(len(chunk))
            collect(wait=True)
    finally:
        decoded.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # a save under way finishes (and cleans up) first


def cartoonize_files(
    cartoonizer: Cartoonizer,
    jobs: list[Job],
    overwrite: bool = False,
    batch_size: int = 4,
    num_workers: int = 2,
    **kwargs,
) -> Report:
    """Run every job, collecting what was written, skipped, partial and failed. ``kwargs`` go to `Cartoonizer.__call__`.

    Images run ``batch_size`` files at a time, videos ``batch_size`` frames at a time; ``num_workers`` threads decode
    and encode while the generator runs (0: all in this thread). A file that cannot be read, and an output that cannot
    be written (`OSError`, codec errors), fail that job only.
    """
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers` must be an integer >= 0 (0: no threads), got {num_workers!r}.")
    report = Report()
    sources = {job.source.resolve() for job in jobs}
    runnable = []
    for job in jobs:
        if job.target.resolve() in sources:
            report.failed.append(f"{job.source}: refusing to write over an input file ({job.target})")
        elif job.target.exists() and not overwrite:
            report.skipped.append(f"{job.target} exists (`overwrite=True`, or --overwrite, replaces it)")
        else:
            runnable.append(job)
    images = [job for job in runnable if not job.is_video]
    max_pixels = kwargs.pop("max_pixels", DEFAULT_MAX_PIXELS)
    _cartoonize_images(cartoonizer, images, report, batch_size, num_workers, max_pixels, **kwargs)
    for job in [job for job in runnable if job.is_video]:
        tmp = job.target.with_name(f".tmp-{job.target.name}")
        failure = None
        try:
            job.target.parent.mkdir(parents=True, exist_ok=True)
            partial = _write_video(
                cartoonizer, job, tmp, batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels, **kwargs
            )
            os.replace(tmp, job.target)
            report.written.append(job.target)
            if partial:
                report.partial.append(f"{partial}; {job.target} holds the rest")
        except (ImageLoadError, WriteError) as error:
            failure = str(error)
        except (OSError, cv2.error) as error:  # the output side: permissions, read-only mounts, full disks, codecs
            failure = f"{job.source}: could not write {job.target} ({error})"
        finally:
            cleanup = _remove_temporary(tmp)  # also on Ctrl-C
        if failure or cleanup:
            report.failed.append("; ".join(message for message in (failure, cleanup) if message))
    return report
