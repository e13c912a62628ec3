"""GuidedFilterGenerator: shapes, style conditioning, its initial state, Hub round trip, and the guided filter."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ghibligan.models.guided import GuidedFilter, GuidedFilterGenerator, box_filter

STYLES = ["toon", "painterly"]


def trained_like(model: GuidedFilterGenerator) -> GuidedFilterGenerator:
    """Move the zero-initialised parts (last conv, FiLM, guide-map output) away from zero, as training does."""
    with torch.no_grad():
        for parameter in (model.conv_out.weight, model.style_film.weight):
            parameter.normal_(0, 0.2)
        for color_map in (model.tone_head, model.guide_map):
            if color_map is not None:
                color_map.style_bias.weight.normal_(0, 0.2)
                color_map.conv_out.weight.normal_(0, 0.2)
        if model.ink_lines is not None:
            model.ink_lines.colour.weight.normal_(0, 0.2)
    return model.eval()


FULL = {"guide_channels": 8, "line_channels": 4}  # every optional part on


@pytest.mark.parametrize("kwargs", [{}, FULL, {"scale_factor": 4, "tone_channels": 0}])
@pytest.mark.parametrize("size", [(64, 64), (37, 81), (300, 457), (5, 7), (1, 1)])
def test_any_size_in_same_size_out(size, kwargs):
    model = trained_like(GuidedFilterGenerator(styles=STYLES, **kwargs))
    sample = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        output = model(sample, style=torch.tensor([0, 1]))
    assert output.shape == sample.shape
    assert output.min() >= -1 and output.max() <= 1
    assert model.size_multiple == 1


@pytest.mark.parametrize("kwargs", [{}, FULL])
def test_style_switches_the_output_and_none_means_the_first_style(kwargs):
    model = trained_like(GuidedFilterGenerator(styles=STYLES, **kwargs))
    sample = torch.rand(1, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        toon = model(sample, style=torch.tensor([0]))
        painterly = model(sample, style=torch.tensor([1]))
        default = model(sample)
    assert (toon - painterly).abs().mean() > 1e-3
    torch.testing.assert_close(default, toon)


def test_a_batch_mixes_styles_row_by_row():
    model = trained_like(GuidedFilterGenerator(styles=STYLES, **FULL))
    sample = torch.rand(1, 3, 40, 40).repeat(2, 1, 1, 1) * 2 - 1
    with torch.no_grad():
        both = model(sample, style=torch.tensor([1, 0]))
        painterly = model(sample[:1], style=torch.tensor([1]))
        toon = model(sample[:1], style=torch.tensor([0]))
    torch.testing.assert_close(both[:1], painterly, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1:], toon, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [{}, FULL])
def test_starts_as_an_edge_preserving_smoothing_of_the_photo(kwargs):
    model = GuidedFilterGenerator(**kwargs).eval()
    height, width = 64, 96
    x = torch.linspace(-1, 1, width).expand(height, width)
    smooth = torch.stack([x, x.flip(-1), 0.3 * x])[None]  # (1, 3, H, W): smooth ramps
    step = torch.where(torch.arange(width) < 45, -0.8, 0.8).expand(1, 3, height, width)  # a hard edge off the grid
    texture = 0.02 * torch.randn(1, 3, height, width)  # faint noise on a flat region: the filter removes it
    with torch.no_grad():
        error = (model(smooth) - smooth).abs()
        assert error[..., 8:-8, 8:-8].max() < 0.02  # smooth content passes through (less exactly at the borders)
        out_step = model(step)
        out_texture = model(texture)
    assert (out_step - step).abs().mean() < 0.02  # the edge is kept at full resolution, not blurred
    assert out_texture.std() < 0.5 * texture.std()


def test_save_and_load_round_trip_keeps_styles(tmp_path):
    model = trained_like(GuidedFilterGenerator(styles=STYLES, channels=8, num_blocks=2, **FULL))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["styles"] == STYLES
    assert config["_class_name"] == "GuidedFilterGenerator"
    loaded = GuidedFilterGenerator.from_pretrained(tmp_path)
    assert loaded.styles == STYLES
    sample = torch.rand(2, 3, 33, 50) * 2 - 1
    style = torch.tensor([1, 0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, style), model(sample, style))


def test_loading_weights_of_another_style_count_fails(tmp_path):
    GuidedFilterGenerator(styles=STYLES, channels=8, num_blocks=2).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["styles"] = ["toon", "painterly", "ghibli"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match"):
        GuidedFilterGenerator.from_pretrained(tmp_path)


def test_style_names_to_indices():
    model = GuidedFilterGenerator(styles=STYLES)
    assert model.style_indices("painterly", batch_size=3).tolist() == [1, 1, 1]
    assert model.style_indices(["painterly", "toon"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"Unknown style 'ghibli'.*\['toon', 'painterly'\]"):
        model.style_indices("ghibli")


@pytest.mark.parametrize(
    "style, message",
    [
        (torch.tensor([2]), r"indices must be in \[0, 1\]"),
        (torch.tensor([-1]), r"indices must be in \[0, 1\]"),
        (torch.tensor([0.0]), "LongTensor of shape"),
        (torch.tensor([0, 1]), r"shape \(1,\)"),
        (0, "LongTensor"),
    ],
)
def test_bad_style_index_errors(style, message):
    model = GuidedFilterGenerator(styles=STYLES)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(1, 3, 16, 16), style=style)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"styles": []}, "non-empty list"),
        ({"styles": "toon"}, "non-empty list"),
        ({"styles": ["toon", "toon"]}, "must not repeat"),
        ({"scale_factor": 0}, "scale_factor"),
        ({"eps": 0.0}, "eps"),
        ({"tone_channels": -1}, "tone_channels"),
    ],
)
def test_invalid_config_fails_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuidedFilterGenerator(**kwargs)


def test_guided_filter_passes_a_constant_image_through():
    guided_filter = GuidedFilter(3, radius=2)
    guide = torch.rand(1, 3, 64, 64)
    constant = torch.full((1, 3, 16, 16), 0.3)
    output = guided_filter(F.interpolate(guide, size=(16, 16), mode="area"), constant, guide)
    torch.testing.assert_close(output, torch.full_like(guide, 0.3))


def test_guided_filter_output_follows_the_guides_edge():
    size, factor = 64, 4
    guide = torch.where(torch.arange(size) < 30, -1.0, 1.0).expand(1, 1, size, size)  # sharp edge at x = 30
    guide_low = F.interpolate(guide, scale_factor=1 / factor, mode="area")
    source_low = 0.5 * guide_low  # a low-resolution target: the same edge, at half contrast, blurred
    output = GuidedFilter(1, radius=1, eps=1e-4)(guide_low, source_low, guide)
    naive = F.interpolate(source_low, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(output, 0.5 * guide, atol=2e-3, rtol=0)  # sharp, at the right place
    assert (naive - 0.5 * guide).abs().max() > 0.2  # where plain upsampling blurs it


def test_box_filter_keeps_constants_at_the_borders():
    torch.testing.assert_close(box_filter(torch.ones(1, 1, 5, 7), radius=2), torch.ones(1, 1, 5, 7))


def test_bfloat16_model_runs_and_stays_close_to_float32():
    model = trained_like(GuidedFilterGenerator(styles=STYLES))
    sample = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        full = model(sample, torch.tensor([1]))
        half = model.to(torch.bfloat16)(sample.bfloat16(), torch.tensor([1]))
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().mean() < 0.03


def test_load_generator_and_the_pipeline_read_a_guided_checkpoint(tmp_path):
    """Registered with `load_generator` (built on the meta device first, as every checkpoint is) and served by the
    `Cartoonizer`, which bounds its activation memory like the other generators'."""
    from ghibligan import Cartoonizer, load_generator

    model = GuidedFilterGenerator(styles=["ghibli", "toon"]).eval()
    model.save_pretrained(tmp_path)
    loaded = load_generator(tmp_path)
    assert type(loaded) is GuidedFilterGenerator and loaded.styles == ["ghibli", "toon"]
    sample = torch.rand(1, 3, 37, 53) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(sample), model(sample))
    pipe = Cartoonizer(loaded, device="cpu")
    assert pipe(np.zeros((37, 53, 3), np.uint8))[0].size == (53, 37)
    assert pipe.activation_bytes(256, 256) > 0
