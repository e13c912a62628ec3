"""Photometric variants of training photos (`ghibligan.photo_variants`, ``make-pairs --photo_variants``): seeded by
the photo's key, real changes of exposure / noise / haze / JPEG, run through the teachers, training photos only,
resumable."""

import numpy as np
import pytest
from PIL import Image

from ghibligan.cli import main
from ghibligan.pairs import done_sources, make_pairs, photos_from_folder, split_of
from ghibligan.photo_variants import PhotoVariation, variant_key, variant_seed, vary_photo
from ghibligan.teachers import ToonTeacher

from .helpers import photo_like
from .test_teachers import load_pairs, make_photos


def photo(width=96, height=64, seed=0):
    return Image.fromarray(photo_like(width, height, seed=seed))


def test_a_variant_is_a_function_of_the_photo_key_and_index_only():
    image = photo()
    first = np.asarray(vary_photo(image, variant_seed("a/001.jpg", 0)))
    assert np.array_equal(first, np.asarray(vary_photo(image, variant_seed("a/001.jpg", 0))))
    assert not np.array_equal(first, np.asarray(vary_photo(image, variant_seed("a/001.jpg", 1))))
    assert not np.array_equal(first, np.asarray(vary_photo(image, variant_seed("a/002.jpg", 0))))
    assert vary_photo(image, variant_seed("x", 0)).size == image.size


@pytest.mark.parametrize(
    "variation, check",
    [
        # -2 EV, nothing else: a quarter of the linear light, so about 0.53x the sRGB-ish values
        (PhotoVariation(exposure=(-2, -2), white_balance=0, haze_probability=0, noise_probability=0,
                        jpeg_probability=0), lambda before, after: 0.45 < after.mean() / before.mean() < 0.6),
        (PhotoVariation(exposure=(1, 1), white_balance=0, haze_probability=0, noise_probability=0, jpeg_probability=0),
         lambda before, after: after.mean() > 1.2 * before.mean()),
        # a veil of 40 %: the contrast falls to ~0.6x
        (PhotoVariation(exposure=(0, 0), white_balance=0, haze_probability=1, haze=(0.4, 0.4), noise_probability=0,
                        jpeg_probability=0), lambda before, after: 0.55 < after.std() / before.std() < 0.65),
        # noise of σ 10 grey levels: the difference from the photo has that spread
        (PhotoVariation(exposure=(0, 0), white_balance=0, haze_probability=0, noise_probability=1, noise=(10, 10),
                        jpeg_probability=0), lambda before, after: 8.5 < (after - before).std() < 10.5),
    ],
)  # fmt: skip
def test_each_effect_does_what_it_says(variation, check):
    image = photo(128, 96)
    before = np.asarray(image, dtype=np.float64)
    after = np.asarray(vary_photo(image, np.random.default_rng(0), variation), dtype=np.float64)
    assert check(before, after)


def test_jpeg_variants_are_really_compressed():
    image = photo(128, 96)
    variation = PhotoVariation(exposure=(0, 0), white_balance=0, haze_probability=0, noise_probability=0,
                               jpeg_probability=1, jpeg_quality=(10, 10))  # fmt: skip
    varied = np.asarray(vary_photo(image, np.random.default_rng(0), variation), dtype=np.float64)
    assert 0.5 < np.abs(varied - np.asarray(image, dtype=np.float64)).mean() < 10  # 8x8 blocks, not a new picture


@pytest.mark.parametrize(
    "kwargs",
    [{"exposure": (1, -1)}, {"noise_probability": 1.5}, {"haze": (0.2, 1.5)}, {"noise": (0, 100)},
     {"jpeg_quality": (0, 50)}, {"jpeg_quality": (50, 100)}, {"white_balance": -0.1}],
)  # fmt: skip
def test_bad_variations_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PhotoVariation(**kwargs)


def test_make_pairs_runs_the_teachers_on_variants_of_training_photos_only(tmp_path):
    photos = list(photos_from_folder(make_photos(tmp_path / "photos", 8)))
    held_out = [key for key, _ in photos if split_of(key, 0.3) == "validation"]
    assert held_out and len(held_out) < len(photos)  # the names give both splits
    teacher = ToonTeacher("toon")
    report = make_pairs(photos, teacher, tmp_path / "pairs", validation_fraction=0.3, photo_variants=2)
    train, validation = load_pairs(tmp_path / "pairs", "train"), load_pairs(tmp_path / "pairs", "validation")
    trained = [key for key, _ in photos if key not in held_out]
    expected = sorted(trained + [variant_key(key, i) for key in trained for i in range(2)])
    assert sorted(train["source"]) == expected and sorted(validation["source"]) == sorted(held_out)
    assert report.written == {"train": 3 * len(trained), "validation": len(held_out)}
    row = train[train["source"].index(variant_key(trained[0], 1))]
    original = train[train["source"].index(trained[0])]["input_image"]
    varied = vary_photo(original, variant_seed(trained[0], 1))
    assert np.array_equal(np.asarray(row["input_image"]), np.asarray(varied))  # the seeded variant, stored as is
    assert np.array_equal(np.asarray(row["target_image"]), np.asarray(teacher(varied)))  # the teacher's real answer


def test_make_pairs_with_variants_resumes_where_it_stopped(tmp_path):
    photos = list(photos_from_folder(make_photos(tmp_path / "photos", 3)))
    make_pairs(photos[:2], ToonTeacher("toon"), tmp_path / "pairs", photo_variants=1, shard_size=2)
    first = sorted(done_sources(tmp_path / "pairs"))
    report = make_pairs(photos, ToonTeacher("toon"), tmp_path / "pairs", photo_variants=2, shard_size=2)
    assert len(first) == 4 and report.already_done == 4  # 2 photos + their first variants
    assert report.written == {"train": 5}  # the 2 photos' second variants, the third photo and its 2 variants
    assert len(done_sources(tmp_path / "pairs")) == 9


def test_cli_photo_variants(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", 2)
    argv = ["make-pairs", "--photos", str(photos), "--teacher", "toon", "--output_dir", str(tmp_path / "pairs")]
    assert main([*argv, "--photo_variants", "-1"]) == 2
    assert "photo_variants" in capsys.readouterr().err and not (tmp_path / "pairs").exists()
    assert main([*argv, "--photo_variants", "1"]) == 0
    assert len(load_pairs(tmp_path / "pairs")) == 4


def test_photo_conditions_script_writes_held_out_pairs_under_each_condition(tmp_path, capsys):
    """scripts/photo_conditions.py: the held-out photos of a make-pairs dataset, each condition applied (seeded by
    the photo's key), run through the teachers again and written as a make-pairs dataset per condition."""
    import importlib.util
    from pathlib import Path

    from ghibligan.photo_variants import CONDITIONS

    path = Path(__file__).resolve().parents[1] / "scripts" / "photo_conditions.py"
    spec = importlib.util.spec_from_file_location("photo_conditions", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    photos = list(photos_from_folder(make_photos(tmp_path / "photos", 8)))
    teachers = [ToonTeacher("toon"), ToonTeacher("painterly")]
    make_pairs(photos, teachers, tmp_path / "pairs", validation_fraction=0.3)
    held_out = load_pairs(tmp_path / "pairs", "validation")
    argv = ["--pairs", str(tmp_path / "pairs"), "--teacher", "toon:toon", "toon:painterly", "--conditions", "dark",
            "noisy", "--output_dir", str(tmp_path / "conditions")]  # fmt: skip
    assert script.main(argv) == 0
    for name in ("dark", "noisy"):
        pairs = load_pairs(tmp_path / "conditions" / name)
        assert sorted(pairs["source"]) == sorted(held_out["source"])
        row = pairs[0]
        original = held_out[held_out["source"].index(row["source"])]["input_image"]
        varied = vary_photo(original, variant_seed(row["source"], 0), CONDITIONS[name])
        assert np.array_equal(np.asarray(row["input_image"]), np.asarray(varied))
        assert np.array_equal(np.asarray(row["painterly"]), np.asarray(teachers[1](varied)))
    dark = np.mean(
        [np.asarray(image, dtype=float).mean() for image in load_pairs(tmp_path / "conditions/dark")["input_image"]]
    )
    assert dark < 0.65 * np.mean([np.asarray(image, dtype=float).mean() for image in held_out["input_image"]])
    assert script.main(argv) == 0  # a re-run has nothing left to do
    assert "0 pairs written, " in capsys.readouterr().out
