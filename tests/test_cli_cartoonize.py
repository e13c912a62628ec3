"""`ghibligan cartoonize`: folders, globs, layout, overwrite policy, bad files, video."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from ghibligan.cli import main

from .helpers import (
    STYLES,
    count_frames,
    photo_like,
    save_tiny_style_model,
    save_tiny_unet,
    write_broken_files,
    write_video,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(save_tiny_unet(tmp_path_factory.mktemp("model") / "ckpt"))


def make_album(root):
    """root/a.jpg, root/b.png (RGBA), root/trip/c.jpg, plus four broken files in root/."""
    (root / "trip").mkdir(parents=True)
    Image.fromarray(photo_like(120, 80)).save(root / "a.jpg")
    rgba = np.dstack([photo_like(64, 64), np.full((64, 64), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "b.png")
    Image.fromarray(photo_like(90, 70)).save(root / "trip" / "c.jpg")
    (root / "README.txt").write_text("not a photo, and not picked up from a folder")
    return write_broken_files(root)


def test_folder_with_broken_files(tmp_path, model, capsys):
    broken = make_album(tmp_path / "album")
    code = main(["cartoonize", str(tmp_path / "album"), "-r", "-o", str(tmp_path / "out"), "--model", model])
    err = capsys.readouterr().err

    assert code == 1  # some failed
    assert Image.open(tmp_path / "out" / "a.png").size == (120, 80)
    assert Image.open(tmp_path / "out" / "b.png").mode == "RGBA"
    assert Image.open(tmp_path / "out" / "trip" / "c.png").size == (90, 70)  # relative layout kept
    assert "3 written, 0 skipped, 4 failed" in err
    for path in broken:
        assert path.name in err
        assert not (tmp_path / "out" / path.with_suffix(".png").name).exists()
    assert not list((tmp_path / "out").rglob(".tmp-*"))  # no half-written files left behind


def test_without_recursive_subfolders_are_ignored(tmp_path, model):
    make_album(tmp_path / "album")
    main(["cartoonize", str(tmp_path / "album"), "-o", str(tmp_path / "out"), "--model", model])
    assert (tmp_path / "out" / "a.png").exists()
    assert not (tmp_path / "out" / "trip").exists()


def test_single_file_overwrite_policy(tmp_path, model, capsys):
    Image.fromarray(photo_like(50, 40)).save(tmp_path / "photo.jpg")
    out = tmp_path / "cartoon.jpg"
    assert main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(out), "--model", model]) == 0
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (50, 40)

    before = out.stat().st_mtime_ns
    assert main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(out), "--model", model]) == 0
    assert "exists (`overwrite=True`, or --overwrite, replaces it)" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == before

    os.utime(out, ns=(0, 0))
    assert main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(out), "--model", model, "--overwrite"]) == 0
    assert out.stat().st_mtime_ns != 0


def test_never_writes_over_an_input(tmp_path, model, capsys):
    Image.fromarray(photo_like(50, 40)).save(tmp_path / "photo.png")
    original = (tmp_path / "photo.png").read_bytes()
    code = main(["cartoonize", str(tmp_path), "-o", str(tmp_path), "--model", model, "--overwrite"])
    assert code == 1
    assert "refusing to write over an input file" in capsys.readouterr().err
    assert (tmp_path / "photo.png").read_bytes() == original


@pytest.mark.parametrize("flag", ["--max_side", "--max-side"])  # the old spelling still works, unlisted
def test_globs_and_max_side(tmp_path, model, flag):
    for name in ("x1.jpg", "x2.jpg", "y.jpg"):
        Image.fromarray(photo_like(400, 300)).save(tmp_path / name)
    pattern = str(tmp_path / "x*.jpg")
    assert main(["cartoonize", pattern, "-o", str(tmp_path / "out"), "--model", model, flag, "200"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x1.png", "x2.png"]
    assert Image.open(tmp_path / "out" / "x1.png").size == (200, 150)


def test_nothing_to_do_is_an_error(tmp_path, model, capsys):
    assert main(["cartoonize", str(tmp_path / "nothing*.jpg"), "-o", str(tmp_path / "o"), "--model", model]) == 2
    assert "no files match" in capsys.readouterr().err


def test_video_keeps_fps_size_and_frame_count(tmp_path, model):
    source = write_video(tmp_path / "clip.mp4", frames=10)

    assert main(["cartoonize", str(source), "-o", str(tmp_path / "toon.mp4"), "--model", model]) == 0
    capture = cv2.VideoCapture(str(tmp_path / "toon.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    capture.release()
    assert count_frames(tmp_path / "toon.mp4") == 10


def test_console_script_end_to_end(tmp_path, model):
    Image.fromarray(photo_like(60, 45)).save(tmp_path / "p.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ghibligan.cli",
            "cartoonize",
            str(tmp_path),
            "-o",
            str(tmp_path / "o"),
            "--model",
            model,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "bad.jpg: the file is empty" in result.stderr
    assert Image.open(tmp_path / "o" / "p.png").size == (60, 45)


def test_cartoonize_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cartoonize", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--model",
        "--max_side",
        "--smoothing_method",
        "--overwrite",
        "--recursive",
        "--tile",
        "--dtype",
        "--style",
    ):
        assert flag in out
    assert "--max-side" not in out  # one spelling shown: the training script's
    assert "ghibligan cartoonize clip.mp4" in out


def test_a_bad_dtype_is_refused_by_the_parser(tmp_path, model, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cartoonize", str(tmp_path), "-o", str(tmp_path / "o"), "--model", model, "--dtype", "float8"])
    assert exit_info.value.code == 2
    assert "'float8': choose auto or one of float32, bfloat16, float16" in capsys.readouterr().err


def test_style_picks_the_models_style_and_keeps_output_names(tmp_path):
    model = str(save_tiny_style_model(tmp_path / "styled"))
    Image.fromarray(photo_like(80, 60)).save(tmp_path / "photo.jpg")
    outputs = {}
    for style in STYLES:
        out = tmp_path / style
        assert (
            main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(out), "--model", model, "--style", style]) == 0
        )
        assert [p.name for p in out.iterdir()] == ["photo.png"]  # named as without --style
        outputs[style] = np.asarray(Image.open(out / "photo.png"), dtype=np.int16)
    assert np.abs(outputs["ghibli"] - outputs["toon"]).mean() > 2
    assert main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "default.png"), "--model", model]) == 0
    default = np.asarray(Image.open(tmp_path / "default.png"), dtype=np.int16)
    assert np.abs(default - outputs["ghibli"]).max() <= 1  # no --style: the model's first


@pytest.mark.parametrize(
    ("styled", "style", "message"),
    [
        (True, "pixel_art", "`style` 'pixel_art' is not one of this model's styles ['ghibli', 'toon', 'painterly']"),
        (False, "ghibli", "`style` 'ghibli' was given, but this model has no styles (styles: none)"),
    ],
)
def test_a_style_the_model_lacks_is_one_line_before_any_work(tmp_path, model, capsys, styled, style, message):
    chosen = str(save_tiny_style_model(tmp_path / "styled")) if styled else model
    Image.fromarray(photo_like(50, 40)).save(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    assert main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(out), "--model", chosen, "--style", style]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ghibligan: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.5", "`posterize` must be a number in [0, 1] or None, got 1.5."),
        ("1", "`posterize` needs a model with a posterizer (a GuidedFilterGenerator built with `levels`"),
    ],
)
def test_a_posterize_the_model_cannot_take_is_one_line_before_any_work(tmp_path, model, capsys, value, message):
    """--posterize on the bundled model (which has a posterizer) works; out of range, or for the plain test U-Net,
    it is one line and nothing is written."""
    Image.fromarray(photo_like(50, 40)).save(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    chosen = ["--model", model] if value == "1" else []
    assert main(["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(out), *chosen, "--posterize", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ghibligan: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
    bundled = tmp_path / "bundled.png"
    args = ["cartoonize", str(tmp_path / "photo.jpg"), "-o", str(bundled), "--style", "toon", "--posterize", "1"]
    assert main(args) == 0 and Image.open(bundled).size == (50, 40)


def test_work_side_draws_at_that_side_and_a_bad_one_is_one_line(tmp_path, capsys):
    """--work_side: 0 draws the photo at its own size, N at N px (upsampled back), the default as the model says
    (the bundled model draws ghibli at 512 px: the same as --work_side 512 on a 600-px photo); out of range, one line
    and nothing written."""
    Image.fromarray(photo_like(600, 400)).save(tmp_path / "photo.png")
    outputs = {}
    for name, extra in (("default", []), ("512", ["--work_side", "512"]), ("0", ["--work_side", "0"])):
        out = tmp_path / f"{name}.png"
        assert main(["cartoonize", str(tmp_path / "photo.png"), "-o", str(out), *extra]) == 0
        outputs[name] = np.asarray(Image.open(out), dtype=np.int16)
        assert outputs[name].shape == (400, 600, 3)
    assert np.array_equal(outputs["default"], outputs["512"])
    assert np.abs(outputs["default"] - outputs["0"]).mean() > 0.5
    out = tmp_path / "bad.png"
    assert main(["cartoonize", str(tmp_path / "photo.png"), "-o", str(out), "--work_side", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ghibligan: error: ") and "`work_side` must be None" in err and err.count("\n") == 1
    assert not out.exists()


def test_exposure_target_brightens_a_dark_photo_for_ghibli_and_a_bad_one_is_one_line(tmp_path, capsys):
    """--exposure_target: the default is the model's (the bundled model's ghibli 0.39: a dark photo is drawn at a
    normal exposure, the same as --exposure_target 0.39), 0 draws it as it is; out of range, one line, nothing
    written."""
    from .helpers import underexposed

    Image.fromarray(underexposed(photo_like(96, 64), 2)).save(tmp_path / "dark.png")
    outputs = {}
    for name, extra in (("default", []), ("0.39", ["--exposure_target", "0.39"]), ("0", ["--exposure_target", "0"])):
        out = tmp_path / f"{name}.png"
        assert main(["cartoonize", str(tmp_path / "dark.png"), "-o", str(out), *extra]) == 0
        outputs[name] = np.asarray(Image.open(out), dtype=np.int16)
    assert np.array_equal(outputs["default"], outputs["0.39"])
    assert np.abs(outputs["default"] - outputs["0"]).mean() > 0.5
    out = tmp_path / "bad.png"
    assert main(["cartoonize", str(tmp_path / "dark.png"), "-o", str(out), "--exposure_target", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ghibligan: error: ") and "`exposure_target`" in err and err.count("\n") == 1
    assert not out.exists()


def test_contour_lines_ink_toon_by_default_and_the_flags_turn_them_off_or_on(tmp_path):
    """--contour_lines: the bundled model inks `toon` with its teacher's lines by default (the same as
    --contour_lines), --no-contour_lines draws none, and --contour_lines adds them to `ghibli`, which has none."""
    from ghibligan.contour_lines import ContourLines, draw_contour_lines

    photo = photo_like(640, 480)
    for x0, y0, color in ((60, 50, (230, 210, 60)), (350, 200, (40, 60, 150))):
        photo[y0 : y0 + 200, x0 : x0 + 220] = color  # flat shapes with clean borders: lines at this size
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert (draw_contour_lines(photo, ContourLines()) > 0.2).mean() > 0.005
    outputs = {}
    for name, extra in (
        ("default", []),
        ("on", ["--contour_lines"]),
        ("off", ["--no-contour_lines"]),
        ("ghibli", ["--style", "ghibli"]),
        ("ghibli on", ["--style", "ghibli", "--contour_lines"]),
    ):
        out = tmp_path / f"{name}.png"
        assert main(["cartoonize", str(tmp_path / "photo.png"), "-o", str(out), "--style", "toon", *extra]) == 0
        outputs[name] = np.asarray(Image.open(out), dtype=np.int16)
    assert np.array_equal(outputs["default"], outputs["on"])
    assert outputs["default"].sum() < outputs["off"].sum()  # the ink darkens
    assert outputs["ghibli on"].sum() < outputs["ghibli"].sum()


def test_joint_upsampling_is_toons_default_and_the_flags_turn_it_off_or_on(tmp_path):
    """--joint_upsampling: the bundled model brings `toon` from its 512-px work side edge-aware by default (the same
    as --joint_upsampling), --no-joint_upsampling upsamples bilinearly, and --joint_upsampling makes `ghibli`'s
    upsampling edge-aware too; the edge-aware cartoon has fewer in-between pixels along the borders."""
    photo = photo_like(1024, 768)
    for x0, y0, color in ((100, 90, (230, 210, 60)), (560, 330, (40, 60, 150))):
        photo[y0 : y0 + 301, x0 : x0 + 333] = color  # flat shapes with sharp borders at odd positions
    Image.fromarray(photo).save(tmp_path / "photo.png")
    outputs = {}
    for name, extra in (
        ("default", []),
        ("on", ["--joint_upsampling"]),
        ("off", ["--no-joint_upsampling"]),
        ("ghibli", ["--style", "ghibli"]),
        ("ghibli on", ["--style", "ghibli", "--joint_upsampling"]),
    ):
        out = tmp_path / f"{name}.png"
        args = ["cartoonize", str(tmp_path / "photo.png"), "-o", str(out), "--style", "toon", "--no-contour_lines"]
        assert main([*args, *extra]) == 0
        outputs[name] = np.asarray(Image.open(out), dtype=np.int16)
    assert np.array_equal(outputs["default"], outputs["on"])
    assert not np.array_equal(outputs["default"], outputs["off"])
    assert not np.array_equal(outputs["ghibli"], outputs["ghibli on"])

    def ramp(image: np.ndarray) -> float:  # the mean gradient across the shapes' left borders: a ramp is weaker
        rows = slice(120, 360)
        return float(np.abs(np.diff(image[rows, 96:106].sum(-1), axis=1)).max(1).mean())

    assert ramp(outputs["default"]) > 1.2 * ramp(outputs["off"])
