"""One model, several styles: `Cartoonizer(images, style=...)` through batching, tiling and the ONNX backend; the
library's ``dtype="auto"`` default."""

import numpy as np
import pytest
import torch

from ghibligan import Cartoonizer, GuidedFilterGenerator
from ghibligan.metrics import flat_share
from ghibligan.pipeline import auto_dtype

from .helpers import STYLES, photo_like, save_tiny_style_model, save_tiny_unet


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory):
    return save_tiny_style_model(tmp_path_factory.mktemp("styles") / "ckpt")


@pytest.fixture(scope="module")
def cartoonizer(style_dir):
    pipe = Cartoonizer.from_pretrained(style_dir, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def record_styles(pipe: Cartoonizer) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    """Every generator call's (batch shape, style indices)."""
    calls = []

    def hook(module, args):
        calls.append((tuple(args[0].shape), args[1].tolist() if len(args) > 1 else None))

    return calls, pipe.generator.register_forward_pre_hook(hook)


def test_styles_are_listed_and_change_the_output(cartoonizer):
    assert cartoonizer.styles == STYLES
    image = photo_like(96, 64)
    outputs = {style: as_array(cartoonizer(image, style=style)[0]) for style in STYLES}
    for a, b in [("ghibli", "toon"), ("toon", "painterly"), ("ghibli", "painterly")]:
        assert np.abs(outputs[a] - outputs[b]).mean() > 2, (a, b)
    assert np.array_equal(as_array(cartoonizer(image)[0]), outputs["ghibli"])  # default: the first style
    assert np.array_equal(as_array(cartoonizer(image, style=2)[0]), outputs["painterly"])  # an index works too


def test_the_style_reaches_every_batch_and_every_tile(cartoonizer):
    images = [photo_like(64, 48, seed=s) for s in range(3)]
    calls, hook = record_styles(cartoonizer)
    try:
        together = cartoonizer(images, style="toon", batch_size=4)
        assert calls == [((3, 3, 48, 64), [1, 1, 1])]
        calls.clear()
        big = photo_like(256, 192)
        for style in STYLES:
            (full,) = cartoonizer(big, style=style, tile=0)
            calls.clear()
            (tiled,) = cartoonizer(big, style=style, tile=128, tile_overlap=32)
            assert len(calls) == 3 * 2 and all(styles == [STYLES.index(style)] for _, styles in calls)
            calls.clear()
            difference = np.abs(as_array(full) - as_array(tiled))
            assert difference.mean() < 0.5, style  # seams blend (tiles see a little less context)
            assert difference[16:48, 16:64].max() <= 1, style  # inside the first tile: as in one pass
    finally:
        hook.remove()
    for image, batched in zip(images, together, strict=True):
        assert np.abs(as_array(batched) - as_array(cartoonizer(image, style="toon")[0])).max() <= 1


@pytest.mark.parametrize(
    ("style", "message"),
    [
        ("pixel_art", r"`style` 'pixel_art' is not one of this model's styles \['ghibli', 'toon', 'painterly'\]"),
        (3, r"`style` 3 is not one of this model's styles \['ghibli', 'toon', 'painterly'\] \(a name, or an index"),
        (True, r"`style` True is not one of"),
        (["toon"], r"`style` \['toon'\] is not one of"),
    ],
)
def test_an_unknown_style_is_refused_before_any_work(cartoonizer, style, message):
    calls, hook = record_styles(cartoonizer)
    try:
        with pytest.raises(ValueError, match=message):
            cartoonizer(photo_like(32, 32), style=style)
    finally:
        hook.remove()
    assert calls == []


def test_a_model_without_styles_takes_no_style(tmp_path):
    pipe = Cartoonizer.from_pretrained(save_tiny_unet(tmp_path / "plain"), device="cpu")
    assert pipe.styles == []
    assert pipe(photo_like(40, 32), style=None)[0].size == (40, 32)
    with pytest.raises(ValueError, match=r"`style` 'ghibli' was given, but this model has no styles \(styles: none\)"):
        pipe(photo_like(40, 32), style="ghibli")


def test_onnx_backend_takes_the_style_and_matches_torch(tmp_path):
    """The pipeline threads the style through onnxruntime as through torch (batches and tiles), within 2 grey levels.
    The model is test_onnx's minimal style generator; `GuidedFilterGenerator` is checked below."""
    pytest.importorskip("onnxruntime")
    from ghibligan.onnx_export import export_onnx
    from ghibligan.onnx_generator import OnnxGenerator

    from .test_onnx import TinyStyleGenerator, trained_looking

    model = trained_looking(TinyStyleGenerator(styles=STYLES))
    torch_pipe = Cartoonizer(model, device="cpu", dtype="float32")
    onnx_pipe = Cartoonizer(OnnxGenerator(export_onnx(model, tmp_path), num_threads=2))
    assert onnx_pipe.styles == STYLES and onnx_pipe.dtype == torch.float32  # "auto" is float32 on onnxruntime
    images = [photo_like(75, 50, seed=1), photo_like(75, 50, seed=2), photo_like(200, 150)]
    outputs = {}
    for style in STYLES:
        expected = torch_pipe(images, style=style, tile=128, tile_overlap=32)
        got = onnx_pipe(images, style=style, tile=128, tile_overlap=32)  # a batch of two and a tiled image
        for a, b in zip(expected, got, strict=True):
            assert np.abs(as_array(a) - as_array(b)).max() <= 2, style
        outputs[style] = as_array(got[0])
    assert np.abs(outputs["ghibli"] - outputs["toon"]).mean() > 1
    with pytest.raises(ValueError, match=r"`style` 'sketch' is not one of this model's styles"):
        onnx_pipe(images[0], style="sketch")


def test_guided_filter_generator_runs_on_onnxruntime_with_styles(style_dir, cartoonizer):
    """The bundled model's class on onnxruntime: exported from the checkpoint on the fly (dynamic height and width,
    the style an int64 input), every style within 2 grey levels of torch, for a batch of two and a tiled image."""
    pytest.importorskip("onnxruntime")
    from ghibligan.onnx_generator import OnnxGenerator

    onnx_pipe = Cartoonizer.from_pretrained(style_dir, backend="onnxruntime")  # exported once, cached in HF_HOME
    assert isinstance(onnx_pipe.generator, OnnxGenerator) and onnx_pipe.styles == STYLES
    assert onnx_pipe.generator.class_name == "GuidedFilterGenerator"
    images = [photo_like(75, 50, seed=1), photo_like(75, 50, seed=2), photo_like(200, 150)]
    outputs = {}
    for style in STYLES:
        expected = cartoonizer(images, style=style, tile=128, tile_overlap=32)
        got = onnx_pipe(images, style=style, tile=128, tile_overlap=32)
        for a, b in zip(expected, got, strict=True):
            assert np.abs(as_array(a) - as_array(b)).max() <= 2, style
        outputs[style] = as_array(got[0])
    assert np.abs(outputs["ghibli"] - outputs["toon"]).mean() > 2  # the style input reaches the graph


def test_dtype_defaults_to_auto_and_an_explicit_dtype_wins(style_dir, tmp_path):
    from ghibligan import load_generator

    device = torch.device("cpu")
    assert Cartoonizer.from_pretrained(style_dir, device="cpu").dtype == auto_dtype(device)
    assert Cartoonizer(load_generator(style_dir), device="cpu").dtype == auto_dtype(device)
    plain = Cartoonizer.from_pretrained(save_tiny_unet(tmp_path / "plain"), device="cpu", dtype="float32")
    assert plain.dtype == torch.float32 and plain.generator.conv_in.weight.dtype == torch.float32
    assert Cartoonizer(load_generator(style_dir), device="cpu", dtype=torch.float32).dtype == torch.float32


def save_posterizer_model(path, toon_strength: float) -> str:
    """A tiny 3-style guided model with a 5-level luma posterizer; `toon`'s strength ``toon_strength``, the others 0
    (as trained: ghibli learns none)."""
    torch.manual_seed(0)
    model = GuidedFilterGenerator(styles=STYLES, channels=4, num_levels=2, num_blocks=1, tone_channels=8, levels=5)
    with torch.no_grad():
        model.level_quantizer.raw_strength.weight[STYLES.index("toon")] = toon_strength / 10  # STRENGTH_RATE
        model.level_quantizer.raw_softness.weight.fill_(-3.0)  # sharp ramps
    model.save_pretrained(path)
    return str(path)


def test_posterize_sets_the_posterizer_strength_in_every_batch_and_tile(tmp_path):
    """``posterize=s`` gives what the model with strength s learned gives, one pass or tiled; 1 is flatter than the
    learned strength, and a style that learned none can still be posterized."""
    learned = Cartoonizer.from_pretrained(save_posterizer_model(tmp_path / "half", 0.5), device="cpu", dtype="float32")
    full = Cartoonizer.from_pretrained(save_posterizer_model(tmp_path / "full", 1.0), device="cpu", dtype="float32")
    off = Cartoonizer.from_pretrained(save_posterizer_model(tmp_path / "off", 0.0), device="cpu", dtype="float32")
    assert learned.can_posterize
    image = photo_like(120, 90)
    for options in ({}, {"tile": 64, "tile_overlap": 8}):
        assert np.array_equal(as_array(learned(image, style="toon", posterize=1.0, **options)[0]),
                              as_array(full(image, style="toon", **options)[0]))  # fmt: skip
        assert np.array_equal(as_array(learned(image, style="toon", posterize=0.0, **options)[0]),
                              as_array(off(image, style="toon", **options)[0]))  # fmt: skip
    batch = learned([image, image[::-1].copy()], style="toon", posterize=1.0)  # one batch of two
    assert np.array_equal(as_array(batch[0]), as_array(full(image, style="toon")[0]))
    soft, hard = learned(image, style="toon")[0], learned(image, style="toon", posterize=1.0)[0]
    assert flat_share(hard) > flat_share(soft)
    ghibli, posterized = learned(image, style="ghibli")[0], learned(image, style="ghibli", posterize=1.0)[0]
    assert np.abs(as_array(ghibli) - as_array(posterized)).mean() > 1


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), True, "1"])
def test_a_bad_posterize_is_refused_before_any_work(tmp_path, value):
    pipe = Cartoonizer.from_pretrained(save_posterizer_model(tmp_path / "m", 0.5), device="cpu")
    calls, hook = record_styles(pipe)
    try:
        with pytest.raises(ValueError, match=r"`posterize` must be a number in \[0, 1\] or None"):
            pipe(photo_like(32, 32), style="toon", posterize=value)
    finally:
        hook.remove()
    assert calls == []


def test_posterize_needs_a_model_with_a_posterizer(tmp_path, style_dir):
    for pipe in (
        Cartoonizer.from_pretrained(save_tiny_unet(tmp_path / "plain"), device="cpu"),
        Cartoonizer.from_pretrained(style_dir, device="cpu"),  # a guided model built without levels
    ):
        assert not pipe.can_posterize
        with pytest.raises(ValueError, match=r"`posterize` needs a model with a posterizer .* has none"):
            pipe(photo_like(32, 32), posterize=0.5)
    bare = GuidedFilterGenerator(styles=STYLES, channels=4, num_levels=2, num_blocks=1)
    with pytest.raises(ValueError, match="`posterize` needs a model with a posterizer"):
        bare(torch.zeros(1, 3, 16, 16), posterize=torch.ones(1))


@pytest.fixture(scope="module")
def work_side_dir(tmp_path_factory):
    return save_tiny_style_model(tmp_path_factory.mktemp("work") / "ckpt", work_sides={"ghibli": 64})


def test_a_style_with_a_work_side_is_drawn_there_and_upsampled(work_side_dir):
    """`work_sides`: a larger photo in that style is drawn at its long side and the cartoon upsampled bilinearly to
    the photo's size (as the ghibli teacher paints at 512 px); other styles, smaller photos and ``work_side=0`` are
    drawn at the photo's own size, and ``work_side=N`` draws any style at N."""
    import cv2
    from PIL import Image

    pipe = Cartoonizer.from_pretrained(work_side_dir, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.work_sides == {"ghibli": 64}
    assert pipe.work_side() == pipe.work_side(0) == pipe.work_side("ghibli") == 64  # None: the first style
    assert pipe.work_side("toon") is None and pipe.work_side("ghibli", 0) is None and pipe.work_side("toon", 80) == 80
    with pytest.raises(ValueError, match=r"`style` 'anime' is not one of"):
        pipe.work_side("anime")
    with pytest.raises(ValueError, match=r"`work_side` must be None"):
        pipe.work_side(0, -5)
    image = photo_like(160, 120)
    calls, hook = record_styles(pipe)
    try:
        (ghibli,) = pipe(image, style="ghibli")
        (toon,) = pipe(image, style="toon")
        (full,) = pipe(image, style="ghibli", work_side=0)
        (forced,) = pipe(image, style="toon", work_side=80)
        (small,) = pipe(photo_like(60, 40), style="ghibli")
        (reduced,) = pipe(image, style="ghibli", max_side=100)
    finally:
        hook.remove()
    shapes = [shape for shape, _ in calls]
    assert shapes == [(1, 3, 48, 64), (1, 3, 120, 160), (1, 3, 120, 160), (1, 3, 60, 80), (1, 3, 40, 60),
                      (1, 3, 48, 64)]  # fmt: skip
    assert {c.size for c in (ghibli, toon, full, forced)} == {(160, 120)}
    assert small.size == (60, 40) and reduced.size == (100, 75)
    drawn = pipe(Image.fromarray(image).resize((64, 48), Image.Resampling.LANCZOS), style="ghibli")[0]
    expected = cv2.resize(np.asarray(drawn), (160, 120), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(np.asarray(ghibli), expected)
    assert np.abs(as_array(ghibli) - as_array(full)).mean() > 0.5  # drawn at 64 px, not at the photo's size


@pytest.mark.parametrize("work_side", [10, 20000, True, 512.0, "512", -1])
def test_a_bad_work_side_is_refused_before_any_work(work_side_dir, work_side):
    pipe = Cartoonizer.from_pretrained(work_side_dir, device="cpu", dtype="float32")
    calls, hook = record_styles(pipe)
    try:
        with pytest.raises(ValueError, match=r"`work_side` must be None \(the model's choice for the style\), 0"):
            pipe(photo_like(32, 32), work_side=work_side)
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize(
    "work_sides",
    [{"anime": 512}, {"ghibli": 10}, {"ghibli": 10**6}, {"ghibli": True}, {"ghibli": "512"}, [512], "ghibli=512"],
)
def test_a_config_with_bad_work_sides_is_refused(tmp_path, work_side_dir, work_sides):
    """A config.json is not trusted: `work_sides` must map the model's own styles to sides in [64, 16384]."""
    import json
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(work_side_dir, hostile)
    config = json.loads((hostile / "config.json").read_text())
    (hostile / "config.json").write_text(json.dumps({**config, "work_sides": work_sides}))
    with pytest.raises(ValueError, match=r"`work_sides` must map some of the styles \['ghibli', 'toon', 'painterly'\]"):
        Cartoonizer.from_pretrained(hostile, device="cpu")


@pytest.fixture(scope="module")
def work_side_onnx(tmp_path_factory, work_side_dir):
    pytest.importorskip("onnxruntime")
    from ghibligan.onnx_export import export_onnx

    return export_onnx(GuidedFilterGenerator.from_pretrained(work_side_dir), tmp_path_factory.mktemp("onnx"))


def test_onnx_backend_draws_at_the_models_work_sides(work_side_dir, work_side_onnx):
    """The ONNX export carries `work_sides` in its metadata: onnxruntime draws each style where torch does."""
    from ghibligan.onnx_generator import OnnxGenerator

    torch_pipe = Cartoonizer.from_pretrained(work_side_dir, device="cpu", dtype="float32")
    onnx_pipe = Cartoonizer(OnnxGenerator(work_side_onnx))
    assert onnx_pipe.work_sides == {"ghibli": 64}
    image = photo_like(160, 120)
    for style in ("ghibli", "toon"):
        expected, got = torch_pipe(image, style=style)[0], onnx_pipe(image, style=style)[0]
        assert expected.size == got.size == (160, 120)
        assert np.abs(as_array(expected) - as_array(got)).max() <= 2, style


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("config", "[1, 2]", r"its ghibligan.config metadata is not a JSON object"),
        ("config", '"abc"', r"its ghibligan.config metadata is not a JSON object"),
        ("config", "null", r"its ghibligan.config metadata is not a JSON object"),
        ("config", "{not json", r"Expecting property name"),
        ("styles", "5", r"its ghibligan.styles metadata must be a list of 1 to 64 style names"),
        ("styles", '"ghibli"', r"its ghibligan.styles metadata must be a list"),
        ("styles", "[]", r"its ghibligan.styles metadata must be a list"),
        ("styles", '["ghibli", 3]', r"its ghibligan.styles metadata must be a list"),
        ("config", '{"work_sides": {"ghibli": 8}}', r"`work_sides` must map some of the styles"),
        ("config", '{"work_sides": [512]}', r"`work_sides` must map some of the styles"),
    ],
)
def test_hostile_onnx_metadata_is_one_value_error(tmp_path, work_side_onnx, key, value, message):
    """An .onnx file may come from anywhere: metadata of the wrong shape is a `ValueError` (the CLI's one-line
    error), not an AttributeError or TypeError deep in the pipeline."""
    import onnx

    from ghibligan.onnx_generator import OnnxGenerator, metadata_key

    proto = onnx.load(str(work_side_onnx))
    entry = next(e for e in proto.metadata_props if e.key == metadata_key(key))
    entry.value = value
    hostile = tmp_path / "model.onnx"
    onnx.save(proto, str(hostile))
    with pytest.raises(ValueError, match=message):
        Cartoonizer(OnnxGenerator(hostile))
