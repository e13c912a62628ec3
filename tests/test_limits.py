"""Bounded loading and bounded inference: hostile configs are refused before anything is allocated, and the pipeline
refuses (or shrinks) work that would not fit in memory."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ghibligan import Cartoonizer, UNetGenerator, load_generator
from ghibligan.models.limits import (
    CONFIG_BOUNDS,
    DEFAULT_MAX_PARAMETERS,
    build_on_meta,
    count_parameters,
    estimate_activation_bytes,
)
from ghibligan.pipeline import smooth

from .helpers import photo_like, save_tiny_unet

ROOT = Path(__file__).resolve().parents[1]


def write_config(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNetGenerator", **config}))
    return folder


def test_oversized_config_is_refused_without_allocating(tmp_path):
    """ngf=200 is 531 M parameters (2.1 GB in fp32); the refusal must come from the meta-device count, so the
    process never holds those gigabytes. Measured in a fresh process, whose peak RSS is not shared with other tests:
    VmHWM, which belongs to the address space exec made (ru_maxrss also counts the pages the child briefly shared
    with the forking pytest process, over 1.5 GB late in the suite, so it failed on the parent's size)."""
    folder = write_config(tmp_path / "huge", ngf=200)
    save_file({"conv_in.weight": torch.zeros(1)}, folder / "model.safetensors")  # 0.1 KB of "weights"
    assert count_parameters(build_on_meta(UNetGenerator, {"ngf": 200})) > DEFAULT_MAX_PARAMETERS
    script = (
        "import resource, sys\n"
        "from ghibligan import UNetGenerator\n"
        "try:\n"
        f"    UNetGenerator.from_pretrained({str(folder)!r})\n"
        "except ValueError as error:\n"
        "    print('REFUSED', error)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # where /proc is missing\n"
        "for line in open('/proc/self/status') if sys.platform == 'linux' else []:\n"
        "    if line.startswith('VmHWM:'):\n"
        "        peak = int(line.split()[1]) // 1024\n"
        "print('PEAK_MB', peak)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "REFUSED" in result.stdout, result.stdout + result.stderr
    assert "above `max_parameters` (200,000,000)" in result.stdout and "pass a larger `max_parameters`" in result.stdout
    peak_mb = int(result.stdout.split("PEAK_MB")[1])
    assert peak_mb < 1500, f"peak RSS {peak_mb} MB: the model was allocated before being refused"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"ngf": 300}, r"`ngf` = 300 is outside the range a ghibligan model accepts \(0 to 256\)"),
        ({"num_downs": 14, "ngf": 1}, r"`num_downs` = 14 is outside the range"),
        ({"attention_heads": 1024}, r"`attention_heads` = 1024 is outside"),
        ({"ngf": "64"}, r"`ngf` must be an integer, got '64'"),
        ({"ngf": 1e9}, r"`ngf` must be an integer"),
    ],
)
def test_configs_out_of_bounds_are_refused_with_the_key_and_value(tmp_path, config, message):
    folder = write_config(tmp_path / "bad", **config)  # no weights at all: the config alone is refused
    with pytest.raises(ValueError, match=message):
        UNetGenerator.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        load_generator(folder)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"flatten_iterations": 1_000_000}, r"`flatten_iterations` = 1000000 is outside the range"),
        ({"flatten_radius": 500}, r"`flatten_radius` = 500 is outside the range"),
        ({"levels": -3}, r"`levels` = -3 is outside the range"),
        ({"despeckle": 1000}, r"`despeckle` = 1000 is outside the range"),
        ({"photo_smoothing": 10**9}, r"`photo_smoothing` = 1000000000 is outside the range"),
        ({"flatten_dilations": [10**9]}, r"`flatten_dilations` must be a list of at most 8 integers in \[1, 64\]"),
        ({"flatten_dilations": [1] * 10**5}, r"`flatten_dilations` must be a list of at most 8"),
    ],
)
def test_guided_configs_asking_for_endless_passes_are_refused(tmp_path, config, message):
    """A guided checkpoint's config could ask for a million flattening passes or a 1001² window: few parameters and
    little memory, but a forward pass that never ends. Refused from config.json alone."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "GuidedFilterGenerator", **config}))
    with pytest.raises(ValueError, match=message):
        load_generator(folder)


def test_config_bounds_admit_the_reference_architectures():
    for key, value in {"ngf": 64, "num_downs": 8, "attention_heads": 8, "tone_head_channels": 32}.items():
        assert value <= CONFIG_BOUNDS[key]
    assert count_parameters(build_on_meta(UNetGenerator, {})) == 54_413_955 < DEFAULT_MAX_PARAMETERS


def test_max_parameters_is_the_callers_to_raise(tmp_path):
    path = save_tiny_unet(tmp_path / "tiny")
    count = count_parameters(UNetGenerator(num_downs=5, ngf=8))
    with pytest.raises(ValueError, match=rf"of {count:,} parameters .* above `max_parameters` \(1,000\)"):
        UNetGenerator.from_pretrained(path, max_parameters=1000)
    with pytest.raises(ValueError, match="above `max_parameters`"):
        load_generator(path, max_parameters=1000)
    with pytest.raises(ValueError, match="above `max_parameters`"):
        Cartoonizer.from_pretrained(path, max_parameters=1000, device="cpu")
    assert count_parameters(UNetGenerator.from_pretrained(path, max_parameters=count)) == count
    assert count_parameters(load_generator(path, max_parameters=None)) == count


def test_weights_are_checked_against_the_header_before_loading(tmp_path):
    path = save_tiny_unet(tmp_path / "tiny")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors' does not exist"):
        UNetGenerator.from_pretrained(path)
    UNetGenerator(num_downs=5, ngf=4).save_pretrained(tmp_path / "narrow")
    (path / "model.safetensors").write_bytes((tmp_path / "narrow" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"size mismatch for conv_in\.weight: \[4, 3, 4, 4\] stored, \[8, 3, 4, 4\]"):
        UNetGenerator.from_pretrained(path)


def test_a_missing_local_path_says_so_instead_of_a_repo_id_error(tmp_path):
    for missing in (tmp_path / "no-such-folder", "./runs/no-such-model", "../elsewhere/model"):
        with pytest.raises(FileNotFoundError, match="neither a checkpoint folder on this machine nor a Hub repo id"):
            load_generator(missing)
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_generator(tmp_path)


def test_oversized_config_json_is_not_read(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text('{"ngf": 8, "pad": "' + "x" * 1_100_000 + '"}')
    with pytest.raises(ValueError, match=r"config\.json of .* is over 1,000,000 bytes"):
        load_generator(folder)


@pytest.mark.parametrize("method", ["guided", "bilateral"])
@pytest.mark.parametrize("strength", [0.1, 1.0])
def test_smoothing_in_strips_equals_one_pass(method, strength):
    image = photo_like(300, 260)
    whole = smooth(image, strength, method, strip_pixels=10**9)
    strips = smooth(image, strength, method, strip_pixels=300 * 20)  # 20-row strips
    assert not np.array_equal(whole, image)
    np.testing.assert_array_equal(strips, whole)


def test_activation_estimate_follows_the_padded_size():
    model = build_on_meta(UNetGenerator, {"num_downs": 5, "ngf": 8})  # pads to multiples of 32
    exact = estimate_activation_bytes(model, 64, 64)
    assert estimate_activation_bytes(model, 65, 65) > 1.8 * exact  # padded to 96×96: 2.25× the area
    assert estimate_activation_bytes(model, 64, 64, batch_size=2) == pytest.approx(2 * exact, rel=0.01)
    deep = build_on_meta(UNetGenerator, {"num_downs": 10, "ngf": 1})
    assert estimate_activation_bytes(deep, 192, 128) > 30 * estimate_activation_bytes(
        build_on_meta(UNetGenerator, {"num_downs": 5, "ngf": 1}), 192, 128
    )  # a 192×128 photo padded to 1024² (43× the area): how a tiny hostile checkpoint used to blow up


def test_pipeline_refuses_or_shrinks_work_above_max_activation_bytes(tmp_path):
    cartoonizer = Cartoonizer.from_pretrained(save_tiny_unet(tmp_path / "tiny"), device="cpu")
    cartoonizer.set_progress_bar_config(disable=True)
    images = [photo_like(96, 64, seed=i) for i in range(4)]
    needed = cartoonizer.activation_bytes(64, 96)
    with pytest.raises(ValueError, match=r"A 96x64 pass of this model needs about .* above `max_activation_bytes`"):
        cartoonizer(images[0], max_activation_bytes=needed // 2)
    batches = []
    generate = cartoonizer._generate
    cartoonizer._generate = lambda batch, *args: batches.append(len(batch)) or generate(batch, *args)
    limited = cartoonizer(images, max_activation_bytes=2 * needed)
    assert batches == [2, 2]  # two fit at once
    batches.clear()
    unlimited = cartoonizer(images, max_activation_bytes=None)
    assert batches == [4]
    for a, b in zip(limited, unlimited, strict=True):
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=1)


def test_memory_estimates_kept_per_size_are_bounded(tmp_path, monkeypatch):
    """A public Space sees endless image sizes: the per-size estimates are a bounded cache, oldest out first."""
    from ghibligan import pipeline

    monkeypatch.setattr(pipeline, "ACTIVATION_CACHE_SIZES", 3)
    cartoonizer = Cartoonizer.from_pretrained(save_tiny_unet(tmp_path / "tiny"), device="cpu")
    estimates = [cartoonizer.activation_bytes(32, width) for width in (32, 40, 48, 56)]
    assert len(cartoonizer._activation_bytes) == 3 and (32, 32, cartoonizer.dtype) not in cartoonizer._activation_bytes
    assert estimates == sorted(estimates) and cartoonizer.activation_bytes(32, 32) == estimates[0]  # recomputed
