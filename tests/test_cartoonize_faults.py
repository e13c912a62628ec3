"""`ghibligan cartoonize` under faults: unwritable outputs, codecs, truncated videos, wrong names, Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
from PIL import Image

from ghibligan.cartoonize import (
    VIDEO_FOURCCS,
    Job,
    can_write_video,
    cartoonize_files,
    check_device,
    ffmpeg_executable,
    plan_jobs,
    writable_video_extensions,
)
from ghibligan.cli import main
from ghibligan.pipeline import Cartoonizer

from .helpers import count_frames, default_ctrl_c, photo_like, save_tiny_unet, write_video


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(save_tiny_unet(tmp_path_factory.mktemp("model") / "ckpt"))


def leftovers(folder):
    return [path for path in folder.rglob(".tmp-*") if path.is_file()]


# -- write errors are per file -----------------------------------------------------------------------------------------


def test_an_unwritable_output_fails_that_file_and_the_run_goes_on(tmp_path, model):
    (tmp_path / "album" / "trip").mkdir(parents=True)
    Image.fromarray(photo_like(40, 30)).save(tmp_path / "album" / "a.jpg")
    Image.fromarray(photo_like(40, 30, seed=1)).save(tmp_path / "album" / "trip" / "c.jpg")
    Image.fromarray(photo_like(40, 30, seed=2)).save(tmp_path / "album" / "z.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "trip").write_text("a file where the sub-folder should go")  # fails for root too

    jobs, problems = plan_jobs([str(tmp_path / "album")], tmp_path / "out", recursive=True)
    report = cartoonize_files(Cartoonizer.from_pretrained(model, device="cpu"), jobs)
    assert problems == [] and not report.ok
    assert sorted(path.name for path in report.written) == ["a.png", "z.png"]  # before and after the failure
    assert len(report.failed) == 1 and "c.jpg" in report.failed[0]
    assert Image.open(tmp_path / "out" / "z.png").size == (40, 30)
    assert (tmp_path / "out" / "trip").read_text() == "a file where the sub-folder should go"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (0o555) folder; the other tests cover it")
def test_a_read_only_output_folder_fails_per_file(tmp_path, model):
    for i in range(2):
        Image.fromarray(photo_like(40, 30, seed=i)).save(tmp_path / f"p{i}.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o555)
    try:
        code = main(["cartoonize", str(tmp_path / "p0.jpg"), str(tmp_path / "p1.jpg"), "-o", str(tmp_path / "out"),
                     "--model", model])  # fmt: skip
        assert code == 1
        assert list((tmp_path / "out").iterdir()) == []
    finally:
        (tmp_path / "out").chmod(0o755)


def run_with_read_only(folder, argv):
    """Run ``python -m ghibligan.cli ARGV`` with ``folder`` bind-mounted read-only in a private mount namespace."""
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    command = ["unshare", "--mount", "sh", "-c", script, str(folder), sys.executable, "-m", "ghibligan.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True)


def can_mount_read_only(tmp_path):
    (tmp_path / "probe").mkdir()
    command = ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0"', str(tmp_path / "probe")]
    try:
        return subprocess.run(command, capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_a_read_only_mount_fails_per_file_and_the_run_goes_on(tmp_path, model):
    if not can_mount_read_only(tmp_path):
        pytest.skip("needs unshare --mount (root or user namespaces) for a real read-only mount")
    (tmp_path / "album" / "trip").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "trip/c.jpg", "z.jpg"]):
        Image.fromarray(photo_like(40, 30, seed=i)).save(tmp_path / "album" / name)
    (tmp_path / "out" / "trip").mkdir(parents=True)
    result = run_with_read_only(tmp_path / "out" / "trip", ["cartoonize", str(tmp_path / "album"), "-r", "-o",
                                str(tmp_path / "out"), "--model", model])  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert sorted(path.name for path in (tmp_path / "out").rglob("*") if path.is_file()) == ["a.png", "z.png"]
    assert "c.jpg" in result.stderr


def test_a_cleanup_that_itself_fails_is_reported_and_the_run_goes_on(tmp_path, model):
    for name in ("a", "b"):
        Image.fromarray(photo_like(40, 30)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "out" / ".tmp-a.png").mkdir(parents=True)  # neither writable as a file nor removable by unlink()
    jobs, _ = plan_jobs([str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")], tmp_path / "out")
    report = cartoonize_files(Cartoonizer.from_pretrained(model, device="cpu"), jobs)
    assert [path.name for path in report.written] == ["b.png"]
    assert len(report.failed) == 1 and "a.jpg" in report.failed[0] and ".tmp-a.png" in report.failed[0]
    assert not (tmp_path / "out" / "a.png").exists()


# -- video containers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", sorted(VIDEO_FOURCCS))
def test_each_video_container_is_written_or_refused_before_work(tmp_path, model, suffix):
    source = write_video(tmp_path / "clip.mp4")
    target = tmp_path / f"toon{suffix}"
    code = main(["cartoonize", str(source), "-o", str(target), "--model", model])
    if can_write_video(suffix):
        assert code == 0
        assert count_frames(target) == 10
        capture = cv2.VideoCapture(str(target))
        assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    else:
        assert code == 2 and not target.exists()
    assert not leftovers(tmp_path)


def test_videos_of_every_container_in_a_folder_all_get_processed(tmp_path, model):
    (tmp_path / "in").mkdir()
    for suffix in (".webm", ".avi", ".mkv"):  # a .webm used to fail after processing, and stop the run
        write_video(tmp_path / "in" / f"clip{suffix}", fourcc=VIDEO_FOURCCS[suffix])
    Image.fromarray(photo_like(40, 30)).save(tmp_path / "in" / "z.jpg")
    assert main(["cartoonize", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", model]) == 0
    for suffix in (".webm", ".avi", ".mkv"):
        assert count_frames(tmp_path / "out" / f"clip{suffix}") == 10
    assert (tmp_path / "out" / "z.png").exists()


def test_avi_output_is_motion_jpeg(tmp_path, model):
    source = write_video(tmp_path / "clip.mp4")
    assert main(["cartoonize", str(source), "-o", str(tmp_path / "toon.avi"), "--model", model]) == 0
    fourcc = int(cv2.VideoCapture(str(tmp_path / "toon.avi")).get(cv2.CAP_PROP_FOURCC))
    assert fourcc.to_bytes(4, "little") == b"MJPG"


def test_an_unwritable_container_in_a_folder_is_refused_at_planning(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "clip.mp4")
    Image.fromarray(photo_like(40, 30)).save(tmp_path / "in" / "a.jpg")
    (tmp_path / "in" / "clip.webm").write_bytes(b"")  # its extension is what matters here
    monkeypatch.setattr("ghibligan.cartoonize.can_write_video", lambda suffix: suffix != ".webm")
    jobs, problems = plan_jobs([str(tmp_path / "in")], tmp_path / "out")
    assert sorted(job.source.name for job in jobs) == ["a.jpg", "clip.mp4"]
    assert len(problems) == 1 and "clip.webm" in problems[0]


def test_the_probe_finds_the_common_containers():
    assert {".mp4", ".avi"} <= set(writable_video_extensions())
    assert not can_write_video(".png") and not can_write_video(".gif")


# -- audio

needs_ffmpeg = pytest.mark.skipif(ffmpeg_executable() is None, reason="no ffmpeg: pip install 'ghibligan[video]'")


def audio_samples(path):
    """Samples of the first audio track decoded at 8 kHz mono; 0 when there is none (ffmpeg has nothing to write)."""
    command = [ffmpeg_executable(), "-v", "error", "-i", str(path), "-map", "0:a:0?", "-f", "s16le", "-ac", "1"]
    return len(subprocess.run([*command, "-ar", "8000", "-"], capture_output=True).stdout) // 2


def write_video_with_audio(path, seconds=2):
    video = ["-f", "lavfi", "-i", f"testsrc=size=64x48:rate=12:duration={seconds}"]
    audio = ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    command = [ffmpeg_executable(), "-v", "error", "-y", *video, *audio, "-c:v", "mpeg4", "-c:a", "aac", str(path)]
    subprocess.run(command, check=True)
    return path


@needs_ffmpeg
@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi"])  # AAC is copied into .mp4/.avi, re-encoded for WebM
def test_audio_is_kept_when_ffmpeg_is_available(tmp_path, model, suffix):
    if not can_write_video(suffix):
        pytest.skip(f"this OpenCV build cannot write {suffix}")
    source = write_video_with_audio(tmp_path / "clip.mp4", seconds=2)
    assert audio_samples(source) == pytest.approx(16000, rel=0.05)
    assert main(["cartoonize", str(source), "-o", str(tmp_path / f"toon{suffix}"), "--model", model]) == 0
    assert audio_samples(tmp_path / f"toon{suffix}") == pytest.approx(audio_samples(source), rel=0.05)
    assert count_frames(tmp_path / f"toon{suffix}") == 24
    assert not leftovers(tmp_path)


@needs_ffmpeg
def test_without_ffmpeg_the_audio_is_dropped_and_the_video_is_written(tmp_path, model, monkeypatch):
    source = write_video_with_audio(tmp_path / "clip.mp4")
    monkeypatch.setattr("ghibligan.cartoonize.ffmpeg_executable", lambda: None)
    assert main(["cartoonize", str(source), "-o", str(tmp_path / "toon.mp4"), "--model", model]) == 0
    assert audio_samples(source) > 0 and audio_samples(tmp_path / "toon.mp4") == 0
    assert count_frames(tmp_path / "toon.mp4") == 24


def test_audio_that_ffmpeg_cannot_copy_is_reported_and_the_video_kept(tmp_path, model, monkeypatch):
    monkeypatch.setattr("ghibligan.cartoonize.ffmpeg_executable", lambda: "false")  # an ffmpeg that always fails
    job = Job(write_video(tmp_path / "clip.mp4"), tmp_path / "toon.mp4")
    report = cartoonize_files(Cartoonizer.from_pretrained(model, device="cpu"), [job])
    assert report.written == [job.target] and len(report.partial) == 1 and "audio" in report.partial[0]
    assert count_frames(job.target) == 10
    assert not leftovers(tmp_path)


# -- short and partial videos ------------------------------------------------------------------------------------------


def test_a_truncated_video_is_written_as_far_as_it_reads_and_reported_partial(tmp_path, model):
    source = write_video(tmp_path / "clip.avi", frames=24, fourcc="MJPG")
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    readable = count_frames(source)
    assert 0 < readable < 24  # the header still says 24

    job = Job(source, tmp_path / "toon.mp4")
    report = cartoonize_files(Cartoonizer.from_pretrained(model, device="cpu"), [job])
    assert report.written == [job.target] and not report.ok
    assert len(report.partial) == 1 and f"{readable} of its 24" in report.partial[0]
    assert count_frames(job.target) == readable
    assert main(["cartoonize", str(source), "-o", str(tmp_path / "again.mp4"), "--model", model]) == 1


def test_a_complete_video_is_not_partial(tmp_path, model):
    job = Job(write_video(tmp_path / "clip.avi", frames=24, fourcc="MJPG"), tmp_path / "toon.mp4")
    report = cartoonize_files(Cartoonizer.from_pretrained(model, device="cpu"), [job])
    assert report.ok and report.partial == [] and count_frames(job.target) == 24


# -- names and folders -------------------------------------------------------------------------------------------------


def test_output_names_must_fit_the_input_kind_and_are_checked_before_work(tmp_path, model):
    video = write_video(tmp_path / "clip.mp4")
    Image.fromarray(photo_like(40, 30)).save(tmp_path / "photo.jpg")
    assert main(["cartoonize", str(video), "-o", str(tmp_path / "x.png"), "--model", model]) == 2
    assert main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "x.mp4"), "--model", model]) == 2
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.mp4").exists()
    with pytest.raises(ValueError, match="--output"):
        plan_jobs([str(video)], tmp_path / "x.png")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="--output"):  # several inputs need a folder
        plan_jobs([str(video), str(tmp_path / "photo.jpg")], tmp_path / "a-file")


def test_an_output_folder_inside_the_input_is_never_part_of_it(tmp_path, model):
    album = tmp_path / "album"
    (album / "sub").mkdir(parents=True)
    Image.fromarray(photo_like(40, 30)).save(album / "a.jpg")
    Image.fromarray(photo_like(40, 30, seed=1)).save(album / "sub" / "b.jpg")
    for _ in range(2):  # the second run must not pick up the first run's outputs
        assert main(["cartoonize", str(album), "-r", "-o", str(album / "toon"), "--model", model]) == 0
    outputs = sorted(path.relative_to(album / "toon").as_posix() for path in (album / "toon").rglob("*.png"))
    assert outputs == ["a.png", "sub/b.png"]
    for pattern in (str(album / "**" / "*.png"), str(album / "**" / "*")):
        jobs, _ = plan_jobs([pattern], album / "toon", recursive=True)
        assert not any(job.source.is_relative_to(album / "toon") for job in jobs)


def test_a_bad_device_is_refused_before_loading(tmp_path, model):
    Image.fromarray(photo_like(40, 30)).save(tmp_path / "photo.jpg")
    assert main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "o.png"), "--device", "foo"]) == 2
    with pytest.raises(ValueError, match="--device"):
        check_device("foo")
    check_device("cpu")
    assert not (tmp_path / "o.png").exists()


# -- Ctrl-C ------------------------------------------------------------------------------------------------------------


def test_a_ctrl_c_while_the_writer_opens_still_closes_the_capture_and_the_writer(tmp_path, model, monkeypatch):
    """SIGINT is blocked while a stream opens, so its KeyboardInterrupt is raised the moment the block ends: the
    capture and the writer opened by then are released by the cartoonizer, not left for the interpreter's shutdown."""
    import contextlib

    import ghibligan.cartoonize as module

    released, opened, blocks = [], [], []

    def recording(factory):
        def make(*args):
            stream = factory(*args)
            opened.append(stream)
            return stream

        return make

    class Stream:  # a cv2 stream that records its release
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def release(self):
            released.append(self)
            self.inner.release()

    job = Job(write_video(tmp_path / "clip.mp4"), tmp_path / "toon.mp4")
    capture, writer = cv2.VideoCapture, cv2.VideoWriter
    monkeypatch.setattr(module.cv2, "VideoCapture", recording(lambda *a: Stream(capture(*a))))
    monkeypatch.setattr(module.cv2, "VideoWriter", recording(lambda *a: Stream(writer(*a))))

    @contextlib.contextmanager
    def interrupted_after_the_writer():
        yield
        blocks.append(None)
        if len(blocks) == 2:  # the writer's block: a Ctrl-C that arrived while it opened
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "_sigint_blocked", interrupted_after_the_writer)
    with pytest.raises(KeyboardInterrupt):
        module._write_video(Cartoonizer.from_pretrained(model, device="cpu"), job, tmp_path / ".tmp-toon.mp4", 2)
    assert len(opened) >= 2 and all(stream in released for stream in opened)  # (and the probes of can_write_video)


def test_ctrl_c_ends_with_exit_code_130_and_leaves_no_temporary_file(tmp_path, model):
    source = write_video(tmp_path / "long.mp4", frames=600, size=(160, 120))
    target = tmp_path / "out" / "toon.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "ghibligan.cli", "cartoonize", str(source), "-o", str(target), "--model", model,
         "--device", "cpu", "--batch-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_ctrl_c,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "out" / ".tmp-toon.mp4").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # mid-video: the temporary file exists
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert not target.exists() and not leftovers(tmp_path)
