"""GuidedFilterGenerator: shapes, style conditioning, its initial state, Hub round trip, and the guided filter."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ghibligan.models import cpu_kernels
from ghibligan.models.color import lab_to_rgb, rgb_to_lab
from ghibligan.models.guided import (
    MAX_SMOOTHING_SCALE,
    MIN_EPS,
    GuidedFilter,
    GuidedFilterGenerator,
    JointBilateralUpsampler,
    LevelQuantizer,
    LumaDespeckle,
    PhotoSmoother,
    RegionFlattener,
    StyleColorMap,
    box_filter,
    core,
    guided_filter_coefficients,
    median9,
    row_slices,
)
from ghibligan.models.noise import noise_variance

from .helpers import photo_like

STYLES = ["toon", "painterly"]


def trained_like(model: GuidedFilterGenerator) -> GuidedFilterGenerator:
    """Move the zero-initialised parts (last conv, FiLM, guide-map output) away from zero, as training does."""
    with torch.no_grad():
        for parameter in (model.conv_out.weight, model.style_film.weight):
            parameter.normal_(0, 0.2)
        if model.style_detail is not None:
            model.style_detail.weight.normal_(0, 0.2)
        for color_map in (model.tone_head, model.guide_map):
            if color_map is not None:
                color_map.style_bias.weight.normal_(0, 0.2)
                color_map.conv_out.weight.normal_(0, 0.2)
        if model.ink_lines is not None:
            model.ink_lines.colour.weight.normal_(0, 0.2)
        if model.level_quantizer is not None:
            model.level_quantizer.raw_strength.weight.fill_(0.08)
        if model.despeckle is not None:
            model.despeckle.raw_strength.weight.fill_(0.07)
    return model.eval()


FULL = {"guide_channels": 8, "line_channels": 4}  # every optional part on
BILATERAL = {"upsampler": "joint_bilateral", "flatten_iterations": 1, "photo_detail": True, "levels": 5, **FULL}


@pytest.mark.parametrize("kwargs", [{}, FULL, BILATERAL, {"scale_factor": 4, "tone_channels": 0}])
@pytest.mark.parametrize("size", [(64, 64), (37, 81), (300, 457), (5, 7), (1, 1)])
def test_any_size_in_same_size_out(size, kwargs):
    model = trained_like(GuidedFilterGenerator(styles=STYLES, **kwargs))
    sample = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        output = model(sample, style=torch.tensor([0, 1]))
    assert output.shape == sample.shape
    assert output.min() >= -1 and output.max() <= 1
    assert model.size_multiple == 1


@pytest.mark.parametrize("kwargs", [{}, FULL, BILATERAL])
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


@pytest.mark.parametrize("kwargs", [{}, FULL, BILATERAL])
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


@pytest.mark.parametrize("kwargs", [FULL, BILATERAL])
def test_save_and_load_round_trip_keeps_styles(tmp_path, kwargs):
    model = trained_like(GuidedFilterGenerator(styles=STYLES, channels=8, num_blocks=2, **kwargs))
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
        ({"upsampler": "bicubic"}, "upsampler"),
        ({"photo_detail": 1}, "photo_detail"),
        ({"flatten_iterations": -1}, "flatten_iterations"),
        ({"flatten_dilations": [0]}, "flatten_dilations"),
        ({"flatten_dilations": [2] * 9}, "flatten_dilations"),
        ({"flatten_dilations": "248"}, "flatten_dilations"),
        ({"flatten_dilations": [2.0]}, "flatten_dilations"),
        ({"levels": -1}, "levels"),
        ({"levels": 2.5}, "levels"),
        ({"upsampler": "joint_bilateral", "range_sigma": float("nan")}, "range_sigma"),
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


def edge_and_texture(size: int = 64, factor: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A guide with a sharp vertical edge at x = 31 (off the low-resolution grid) and strong texture on both sides;
    a low-resolution source that is flat on each side: (guide, guide_low, source_low)."""
    torch.manual_seed(0)
    edge = torch.where(torch.arange(size) < 31, -0.6, 0.6).expand(1, 1, size, size)
    guide = edge + 0.15 * torch.randn(1, 1, size, size)  # texture: ±0.15, well inside each side
    guide_low = F.interpolate(guide, scale_factor=1 / factor, mode="area")
    source_low = torch.sign(F.interpolate(edge, scale_factor=1 / factor, mode="area")) * 0.5
    return guide, guide_low, source_low


def test_joint_bilateral_keeps_flat_regions_flat_and_the_edge_sharp():
    """The property it exists for: the output mixes source values, so the guide's texture never comes back (the
    guided filter's ``A · guide + b`` brings it back next to an edge), and each pixel takes its own side of the
    edge, at full resolution."""
    guide, guide_low, source_low = edge_and_texture()
    with torch.no_grad():
        output = JointBilateralUpsampler(2, sigma=0.1)(guide_low, source_low, guide)
        guided = GuidedFilter(1, radius=1, eps=1e-3)(guide_low, source_low, guide)
    expected = torch.where(torch.arange(64) < 31, -0.5, 0.5).expand_as(guide)
    assert output.min() >= source_low.min() and output.max() <= source_low.max()  # a convex combination
    wrong_side = (output - expected).abs() > 0.25
    assert wrong_side.float().mean() < 0.01  # sharp, at the guide's edge (x = 31 is between two low-res pixels)
    away = (torch.arange(64) < 28) | (torch.arange(64) > 33)
    assert (output - expected)[..., away].abs().max() < 1e-3  # exactly flat on both sides, texture gone
    assert (guided - expected)[..., 26:36].abs().max() > 0.05  # the guided filter leaks texture near the edge


def joint_bilateral_reference(guide_low, source_low, guide, sigma):
    """Kopf et al.'s formula pixel by pixel: the bilinear taps of `F.interpolate` (align_corners=False, clamped)."""
    (_, _, height, width), (low_height, low_width) = guide.shape, guide_low.shape[-2:]
    output = torch.zeros((*source_low.shape[:2], height, width))
    for y, x in itertools.product(range(height), range(width)):
        sy = max((y + 0.5) * low_height / height - 0.5, 0.0)
        sx = max((x + 0.5) * low_width / width - 0.5, 0.0)
        y0, x0 = int(sy), int(sx)
        numerator, denominator = 0.0, 0.0
        for ty, wy in ((y0, 1 - (sy - y0)), (min(y0 + 1, low_height - 1), sy - y0)):
            for tx, wx in ((x0, 1 - (sx - x0)), (min(x0 + 1, low_width - 1), sx - x0)):
                distance = (guide[:, :, y, x] - guide_low[:, :, ty, tx]).square().sum(1)  # (B,)
                weight = torch.exp(-distance / (2 * sigma**2)) * wy * wx
                numerator = numerator + weight[:, None] * source_low[:, :, ty, tx]
                denominator = denominator + weight[:, None]
        output[:, :, y, x] = numerator / denominator
    return output


@pytest.mark.parametrize("scale_factor, size", [(2, (12, 16)), (2, (9, 13)), (3, (12, 9)), (3, (10, 7))])
def test_joint_bilateral_matches_the_formula_at_any_size(scale_factor, size):
    """The phase-by-phase computation (slices and a pixel shuffle) is Kopf et al.'s formula, odd sizes included
    (the full-resolution side is padded to a multiple of the factor, then cropped)."""
    torch.manual_seed(0)
    guide = torch.rand(2, 3, *size) * 0.4  # close enough colours that no range weight underflows
    low_size = tuple(-(-side // scale_factor) for side in size)
    guide_low = F.interpolate(guide, size=low_size, mode="area")
    source_low = torch.rand(2, 3, *low_size) * 2 - 1
    upsampler = JointBilateralUpsampler(scale_factor, sigma=0.2)
    with torch.no_grad():
        output = upsampler(guide_low, source_low, guide)
        constant = upsampler(guide_low, torch.full_like(source_low, 0.3), guide)
    padded = F.pad(
        guide, (0, low_size[1] * scale_factor - size[1], 0, low_size[0] * scale_factor - size[0]), mode="replicate"
    )
    expected = joint_bilateral_reference(guide_low, source_low, padded, 0.2)[..., : size[0], : size[1]]
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(constant, torch.full_like(constant, 0.3))


def test_joint_bilateral_sigma_learns():
    guide, guide_low, source_low = edge_and_texture()
    upsampler = JointBilateralUpsampler(2, sigma=0.5)  # too wide: blurs the edge
    expected = torch.where(torch.arange(64) < 31, -0.5, 0.5).expand_as(guide)
    loss = (upsampler(guide_low, source_low, guide) - expected).abs().mean()
    loss.backward()
    assert upsampler.raw_sigma.grad is not None and upsampler.raw_sigma.grad > 0  # narrowing it helps


def test_region_flattener_makes_plateaus_and_keeps_edges():
    """Iterated bilateral filtering: texture well below σ averages out in a few passes, a step well above σ stays."""
    torch.manual_seed(0)
    edge = torch.where(torch.arange(48) < 20, -0.5, 0.5).expand(1, 3, 48, 48)
    noisy = edge + 0.03 * torch.randn(1, 3, 48, 48)
    flattener = RegionFlattener(num_styles=1, iterations=3, radius=2, sigma=0.1)
    with torch.no_grad():
        flat = flattener(noisy, torch.tensor([0]))
    left, right = flat[..., :, :17], flat[..., :, 23:]
    assert left.std() < 0.2 * 0.03 and right.std() < 0.2 * 0.03  # plateaus
    torch.testing.assert_close(flat[..., 19] - flat[..., 20], torch.full_like(flat[..., 19], -1.0), atol=0.02, rtol=0)
    constant = torch.full((1, 3, 9, 9), 0.25)
    torch.testing.assert_close(flattener(constant, torch.tensor([0])), constant)


def test_region_flattener_sigma_is_per_style_and_learns():
    torch.manual_seed(0)
    flattener = RegionFlattener(num_styles=2, iterations=2, radius=1, sigma=0.05)
    with torch.no_grad():
        flattener.log_sigma.weight[1] = math.log(0.5)  # style 1 flattens much more
    image = torch.rand(1, 3, 16, 16) * 0.4
    out = flattener(image.expand(2, -1, -1, -1), torch.tensor([0, 1]))
    assert out[1].std() < 0.5 * out[0].std()
    out.std().backward()  # less spread ← wider σ: the gradient says so
    assert flattener.log_sigma.weight.grad[0, 0] < 0


def test_dilated_flattening_passes_reach_across_a_wide_region_and_keep_its_border():
    """A region 40 pixels wide, shaded in waves 32 pixels long: three 5x5 passes leave most of the shading (they reach
    6 pixels), dilated 3x3 passes (2, 4, 8, 16) on top flatten it, and the step to the next region stays a step. With
    their own σ at ~0 a style gets the plain passes' result."""
    shading = -0.4 + 0.05 * torch.sin(2 * math.pi * torch.arange(40.0) / 32)
    image = torch.cat([shading.expand(1, 3, 24, 40), torch.full((1, 3, 24, 20), 0.8)], dim=-1)  # then a bright region
    style = torch.tensor([0])
    plain = RegionFlattener(num_styles=2, iterations=3, radius=2, sigma=0.1)
    dilated = RegionFlattener(num_styles=2, iterations=3, radius=2, sigma=0.1, dilations=(2, 4, 8, 16))
    with torch.no_grad():
        flat_plain, flat_dilated = plain(image, style), dilated(image, style)
        region_plain, region_dilated = flat_plain[..., :40], flat_dilated[..., :40]
        assert region_dilated.std() < 0.3 * region_plain.std() and region_plain.std() > 0.8 * image[..., :40].std()
        assert (flat_dilated[..., 41:] - 0.8).abs().max() < 1e-3  # nothing leaks across the border
        assert flat_dilated[..., 41].min() - flat_dilated[..., 38].max() > 0.9
        dilated.log_sigma_dilated.weight[1] = math.log(1e-3)  # style 1: dilated passes off
        torch.testing.assert_close(dilated(image, torch.tensor([1])), flat_plain, atol=1e-3, rtol=0)


def test_photo_detail_adds_back_the_photos_fine_texture_per_style():
    model = GuidedFilterGenerator(styles=STYLES, upsampler="joint_bilateral", photo_detail=True, tone_channels=0)
    model.eval()
    torch.manual_seed(0)
    texture = 0.2 * torch.randn(1, 3, 64, 64)  # fine texture on a flat grey: downsampling by 2 removes most of it
    with torch.no_grad():
        model.style_detail.weight[:] = torch.tensor([[0.0], [1.0]])  # toon keeps none, painterly all
        flat, detailed = model(texture.expand(2, -1, -1, -1), style=torch.tensor([0, 1]))
    assert detailed.std() > 2 * flat.std()
    assert (detailed - texture).abs().mean() < (flat - texture).abs().mean()


def test_region_flattener_equals_the_plain_window_loop():
    """Its half-window computation (each symmetric weight used twice) is the textbook loop over the whole window."""

    def plain_passes(x, log_sigma, iterations, radius, dilation=1):
        height, width, pad = x.shape[-2], x.shape[-1], radius * dilation
        inv_two_var = (0.5 * torch.exp(-2 * log_sigma))[:, :, None, None]
        for _ in range(iterations):
            padded = F.pad(x, (pad,) * 4, mode="replicate")
            numerator = denominator = 0
            for dy, dx in itertools.product(range(0, 2 * pad + 1, dilation), repeat=2):
                neighbour = padded[..., dy : dy + height, dx : dx + width]
                weight = torch.exp(-(neighbour - x).square().sum(1, keepdim=True) * inv_two_var)
                numerator, denominator = numerator + neighbour * weight, denominator + weight
            x = numerator / denominator
        return x

    def plain(flattener, x, style):
        x = plain_passes(x, flattener.log_sigma(style), flattener.iterations, flattener.radius)
        for dilation in flattener.dilations:  # then the 3x3 passes with spread-out taps
            x = plain_passes(x, flattener.log_sigma_dilated(style), 1, 1, dilation)
        return x

    torch.manual_seed(0)
    cases = [(1, (9, 13), ()), (2, (17, 11), ()), (3, (20, 20), ()), (2, (3, 4), ()), (2, (23, 30), (2, 4, 8))]
    for radius, size, dilations in cases:
        flattener = RegionFlattener(num_styles=2, iterations=2, radius=radius, sigma=0.2, dilations=dilations)
        x, style = torch.rand(2, 3, *size), torch.tensor([0, 1])
        with torch.no_grad():
            if dilations:
                flattener.log_sigma_dilated.weight[1] = math.log(0.4)
            torch.testing.assert_close(flattener(x, style), plain(flattener, x, style), atol=1e-5, rtol=0)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_color_map_slices_of_rows_at_inference_equal_one_pass(memory_format):
    color_map = StyleColorMap(3, 8, num_styles=2)
    with torch.no_grad():
        color_map.conv_out.weight.normal_(0, 0.3)
        color_map.style_bias.weight.normal_(0, 0.3)
    color_map.inference_pixels = 37 * 10  # 10 rows a slice: 5 slices, the last one shorter
    image = (torch.rand(2, 3, 41, 37) * 2 - 1).contiguous(memory_format=memory_format)
    style = torch.tensor([1, 0])
    passes, map_rows = [], color_map._map
    color_map._map = lambda rows, *args: passes.append(rows.shape[-2]) or map_rows(rows, *args)
    with torch.no_grad():
        sliced, whole = color_map.eval()(image, style), color_map.train()(image, style)
    assert passes == [10, 10, 10, 10, 1, 41]
    torch.testing.assert_close(sliced, whole)
    assert not torch.equal(whole, image)


@pytest.mark.parametrize("size, scale_factor", [((37, 81), 2), ((301, 203), 3), ((64, 64), 2)])
def test_flattener_and_upsampler_in_slices_of_rows_equal_one_pass(size, scale_factor):
    """At inference the flattener and the joint bilateral upsampler run in slices of rows (with a halo of their reach)
    so their tensors stay in cache: the result is the one-pass result, bit for bit, at any slice size."""
    torch.manual_seed(0)
    height, width = size
    low_height, low_width = -(-height // scale_factor), -(-width // scale_factor)
    upsampler = JointBilateralUpsampler(scale_factor, sigma=0.2).eval()
    flattener = RegionFlattener(num_styles=2, iterations=3, radius=2, dilations=(2, 4)).eval()
    guide_low, source_low = torch.rand(2, 3, low_height, low_width), torch.rand(2, 3, low_height, low_width) * 2 - 1
    guide, style = torch.rand(2, 3, height, width), torch.tensor([1, 0])
    upsampler.inference_pixels = flattener.inference_pixels = None
    upsampled, flattened = upsampler(guide_low, source_low, guide), flattener(source_low, style)
    for pixels in (1, low_width, 7 * low_width + 3, low_height * low_width - 1):  # 1 row a slice ... 2 slices
        upsampler.inference_pixels = flattener.inference_pixels = pixels
        assert torch.equal(upsampler(guide_low, source_low, guide), upsampled), pixels
        assert torch.equal(flattener(source_low, style), flattened), pixels
    assert not torch.equal(flattened, source_low)  # the flattener did something to compare


def test_row_slices_cover_every_row_once_with_their_halo():
    slices = row_slices(10, rows=4, halo=2)
    assert slices == [(0, 6, 0, 4), (2, 10, 4, 8), (6, 10, 8, 10)]
    assert [row for _, _, start, stop in slices for row in range(start, stop)] == list(range(10))


def luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def test_level_quantizer_starts_as_the_identity_and_posterizes_at_full_strength():
    """Strength 0 (initialisation): the input. Strength 1: a smooth ramp becomes flat levels ``step`` apart with sharp
    borders, and a grey shift keeps each pixel's colour differences (the hue)."""
    ramp = torch.linspace(-0.9, 0.9, 200).expand(1, 1, 8, 200)
    image = torch.cat([ramp + 0.05, ramp, ramp - 0.05], dim=1)  # a slightly warm grey ramp
    quantizer = LevelQuantizer(num_styles=2, levels=5, softness=0.05)
    style = torch.tensor([0, 1])
    torch.testing.assert_close(quantizer(image.expand(2, -1, -1, -1), style), image.expand(2, -1, -1, -1))
    with torch.no_grad():
        quantizer.raw_strength.weight[1] = 1.0  # style 1 at full strength (clamped to 1)
        out = quantizer(image.expand(2, -1, -1, -1), style)
    torch.testing.assert_close(out[0], image[0])
    levels = luma(out[1:])[0, 0]
    values = torch.unique(levels.round(decimals=3))
    steps = (levels[1:] - levels[:-1]).abs()
    assert (steps < 1e-5).float().mean() > 0.9  # flat almost everywhere
    plateaus = [v for v in values if (levels.round(decimals=3) == v).sum() >= 10]
    torch.testing.assert_close(torch.tensor(plateaus).diff(), torch.full((len(plateaus) - 1,), 0.4), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[1, 0] - out[1, 2], image[0, 0] - image[0, 2])  # colour differences kept


def test_level_quantizer_gradient_passes_straight_through_and_its_parameters_learn():
    torch.manual_seed(0)
    image = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    quantizer = LevelQuantizer(num_styles=2, levels=4)
    with torch.no_grad():
        quantizer.raw_strength.weight.fill_(0.05)  # strength 0.5
    out = quantizer(image, torch.tensor([0, 1]))
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    torch.testing.assert_close(image.grad, weights)  # the identity's gradient: a pixel is pushed across its border
    for parameter in quantizer.parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_level_quantizer_learns_a_teachers_levels_from_a_nearby_start():
    """Fitted by gradient descent to a ramp cut into 3 hard levels, from levels 10 % too close and a little off centre
    (where `fit_level_quantizer`'s estimate leaves it), the quantizer takes the teacher's step, centres and hard
    borders."""
    ramp = torch.linspace(-1, 1, 256).expand(1, 3, 4, 256)
    target = (torch.floor((ramp + 1) / (2 / 3)).clamp(max=2) + 0.5) * (2 / 3) - 1  # centres -2/3, 0, 2/3
    quantizer = LevelQuantizer(num_styles=1, levels=4)
    quantizer.set_levels(0, step=0.6, offset=0.28, strength=1.0)
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=1e-2)
    style = torch.tensor([0])
    with torch.no_grad():
        start = (quantizer(ramp, style) - target).abs().mean()
    for _ in range(300):
        optimizer.zero_grad()
        (quantizer(ramp, style) - target).abs().mean().backward()
        optimizer.step()
    step, offset, softness, strength = (p.item() for p in quantizer.parameters_for(style, torch.float32))
    with torch.no_grad():
        assert (quantizer(ramp, style) - target).abs().mean() < 0.15 * start
    assert step == pytest.approx(2 / 3, abs=0.02) and offset % step == pytest.approx(1 / 3, abs=0.02)
    assert softness < 0.1 and strength == 1.0


def test_level_quantizer_in_slices_of_rows_equals_one_pass():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 37, 29) * 2 - 1
    quantizer = LevelQuantizer(num_styles=2, levels=5).eval()
    with torch.no_grad():
        quantizer.raw_strength.weight.fill_(0.07)
        one_pass = quantizer(image, torch.tensor([0, 1]))
        quantizer.inference_pixels = 100  # 3 rows a slice
        torch.testing.assert_close(quantizer(image, torch.tensor([0, 1])), one_pass, atol=0, rtol=0)


def window_median(y: torch.Tensor, radius: int) -> torch.Tensor:
    """Reference: the median of each (2r+1)² window of (B, 1, H, W), edges replicated, by `torch.median`."""
    height, width = y.shape[-2:]
    padded = F.pad(y, (radius,) * 4, mode="replicate")
    size = 2 * radius + 1
    return (
        torch.stack([padded[..., i : i + height, j : j + width] for i in range(size) for j in range(size)])
        .median(0)
        .values
    )


def test_median9_is_the_median():
    torch.manual_seed(0)
    values = [torch.randn(1000) for _ in range(9)]
    torch.testing.assert_close(median9(values), torch.stack(values).median(0).values, atol=0, rtol=0)
    ties = [torch.tensor([1.0, 2.0, 2.0])] * 5 + [torch.tensor([0.0, 3.0, 2.0])] * 4
    torch.testing.assert_close(median9(ties), torch.tensor([1.0, 2.0, 2.0]))


@pytest.mark.parametrize("radius", [1, 2])
def test_despeckle_is_a_median_of_the_luma_blended_per_style(radius):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 23, 31) * 2 - 1
    despeckle = LumaDespeckle(num_styles=3, radius=radius).eval()
    style = torch.tensor([2, 0])
    torch.testing.assert_close(despeckle(image, style), image, atol=0, rtol=0)  # strength 0 at construction
    with torch.no_grad():
        despeckle.raw_strength.weight.copy_(torch.tensor([[0.03], [0.0], [1.0]]))  # 0.3, 0, clamped to 1
        out = despeckle(image, style)
    y = luma(image)[:, None]
    expected = image + torch.tensor([1.0, 0.3])[:, None, None, None] * (window_median(y, radius) - y)
    torch.testing.assert_close(out, expected.clamp(-1, 1), atol=1e-6, rtol=0)
    inside = (expected.abs() < 1).all(1)  # where no channel was clamped, a grey shift: the hue stays
    torch.testing.assert_close((out[:, 0] - out[:, 2])[inside], (image[:, 0] - image[:, 2])[inside])
    assert inside.float().mean() > 0.5


def test_despeckle_removes_islands_and_keeps_borders():
    """At full strength a one-pixel island of another level goes, a straight border between two areas stays."""
    image = torch.full((1, 3, 12, 12), -0.5)
    image[..., :, 6:] = 0.5  # two areas, a vertical border
    image[..., 3, 2] = 0.5  # an island of the bright level in the dark area
    image[..., 8, 9] = -0.5  # and a dark one in the bright area
    despeckle = LumaDespeckle(num_styles=1).eval()
    with torch.no_grad():
        despeckle.raw_strength.weight.fill_(1.0)
        out = despeckle(image, torch.tensor([0]))
    expected = torch.full_like(image, -0.5)
    expected[..., :, 6:] = 0.5
    torch.testing.assert_close(out, expected)


def test_despeckle_set_strength_fixes_one_style_and_clamps():
    """At export a style's median can be set to its teacher's full strength; the other styles keep theirs."""
    despeckle = LumaDespeckle(num_styles=3)
    with torch.no_grad():
        despeckle.raw_strength.weight.fill_(0.5 / despeckle.STRENGTH_RATE)  # trained: part strength everywhere
    despeckle.set_strength(1, 1.0)
    despeckle.set_strength(2, 7.0)  # clamped to 1
    torch.testing.assert_close(despeckle.strength(torch.tensor([0, 1, 2])), torch.tensor([0.5, 1.0, 1.0]))
    despeckle.set_strength(2, -1.0)
    assert despeckle.strength(torch.tensor([2])).item() == 0.0


def test_despeckle_learns_its_strength_and_passes_gradients():
    torch.manual_seed(0)
    clean = torch.full((4, 3, 16, 16), -0.4)
    clean[..., 8:, :] = 0.4
    speckled = clean.clone()
    speckled[..., torch.randint(16, (12,)), torch.randint(16, (12,))] *= -1  # islands of the other level
    despeckle = LumaDespeckle(num_styles=1)
    optimizer = torch.optim.Adam(despeckle.parameters(), lr=1e-2)
    style = torch.zeros(4, dtype=torch.long)
    image = speckled.clone().requires_grad_()
    (despeckle(image, style) - clean).abs().mean().backward()
    assert image.grad.abs().sum() > 0 and despeckle.raw_strength.weight.grad.abs().sum() > 0
    for _ in range(100):
        optimizer.zero_grad()
        (despeckle(speckled, style) - clean).abs().mean().backward()
        optimizer.step()
    assert despeckle.strength(style)[0].item() == pytest.approx(1.0, abs=0.05)


def test_despeckle_in_slices_of_rows_equals_one_pass():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 37, 29) * 2 - 1
    for radius in (1, 2):
        despeckle = LumaDespeckle(num_styles=2, radius=radius).eval()
        with torch.no_grad():
            despeckle.raw_strength.weight.fill_(0.07)
            with cpu_kernels.disabled():
                one_pass = despeckle(image, torch.tensor([0, 1]))
                despeckle.inference_pixels = 100  # 3 rows a slice, `radius` rows of halo
                torch.testing.assert_close(despeckle(image, torch.tensor([0, 1])), one_pass, atol=0, rtol=0)


def test_generator_with_despeckle_round_trips_and_rejects_bad_radii(tmp_path):
    model = trained_like(GuidedFilterGenerator(styles=STYLES, levels=5, despeckle=1))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["despeckle"] == 1
    loaded = GuidedFilterGenerator.from_pretrained(tmp_path).eval()
    sample, style = torch.rand(2, 3, 20, 30) * 2 - 1, torch.tensor([0, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, style), model(sample, style))
        off = GuidedFilterGenerator(styles=STYLES, levels=5)
        off.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("despeckle.")})
        assert (off.eval()(sample, style) - model(sample, style)).abs().max() > 1e-3  # the stage does something
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="despeckle"):
            GuidedFilterGenerator(styles=STYLES, despeckle=bad)


def lab_levels_image(levels: int, seed: int = 0, size: int = 48) -> torch.Tensor:
    """(1, 3, size, size) RGB whose CIE L* sits on ``levels`` levels of [0, 100] (their centres), with random hues."""
    generator = torch.Generator().manual_seed(seed)
    level = torch.randint(levels, (1, 1, size // 8, size // 8), generator=generator).float()
    lightness = F.interpolate((level + 0.5) * (100 / levels), size=size, mode="nearest")
    chroma = F.interpolate(torch.rand(1, 2, size // 8, size // 8, generator=generator) * 16 - 8, size=size)  # in gamut
    return lab_to_rgb(torch.cat([lightness, chroma], dim=1))


def test_lab_conversion_matches_opencv_and_round_trips():
    cv2 = pytest.importorskip("cv2")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 17, 23) * 2 - 1
    lab = rgb_to_lab(x)
    reference = cv2.cvtColor(((x[0].permute(1, 2, 0).numpy() + 1) / 2).astype(np.float32), cv2.COLOR_RGB2LAB)
    # OpenCV computes float Lab through tables (its a* and b* come in 1/64 steps): agreement within 0.6
    np.testing.assert_allclose(lab[0].permute(1, 2, 0).numpy(), reference, atol=0.6)
    torch.testing.assert_close(lab_to_rgb(lab), x, atol=1e-4, rtol=0)


def test_lab_level_quantizer_cuts_lightness_not_luma():
    """In the lab space a colourful image whose L* lies on 4 levels is a fixed point at full strength with those
    levels (its luma does not lie on levels: the same L* is another luma for each hue), and the luma space moves it."""
    image = lab_levels_image(4)
    style = torch.tensor([0])
    lab_quantizer, luma_quantizer = LevelQuantizer(1, 4, space="lab"), LevelQuantizer(1, 4)
    lab_quantizer.set_levels(0, step=0.5, offset=-1.0, strength=1.0)  # L* levels 25 apart from 0
    luma_quantizer.set_levels(0, step=0.5, offset=-1.0, strength=1.0)
    with torch.no_grad():
        torch.testing.assert_close(lab_quantizer(image, style), image, atol=2e-3, rtol=0)
        assert (luma_quantizer(image, style) - image).abs().mean() > 0.02
        with torch.no_grad():
            lab_quantizer.raw_strength.weight.zero_()  # strength 0: the identity (up to the Lab round trip)
        torch.testing.assert_close(lab_quantizer(image + 0.05, style), (image + 0.05).clamp(-1, 1), atol=1e-4, rtol=0)
    assert lab_quantizer.signal(image[0]).shape == image.shape[-2:]
    with pytest.raises(ValueError, match="space"):
        LevelQuantizer(1, 4, space="hsv")


def test_lab_level_quantizer_learns_chroma_and_passes_gradients():
    torch.manual_seed(0)
    noisy = (torch.rand(1, 3, 16, 16) * 1.6 - 0.8).requires_grad_()  # values everywhere within the levels
    quantizer = LevelQuantizer(1, 5, space="lab")
    quantizer.set_levels(0, step=0.4, offset=-1.0, strength=0.5)
    quantizer(noisy, torch.tensor([0])).square().sum().backward()
    assert noisy.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in quantizer.parameters())
    image = lab_levels_image(5, seed=1)
    target = lab_to_rgb(rgb_to_lab(image) * torch.tensor([1.0, 1.4, 1.4])[None, :, None, None])  # more saturated
    optimizer = torch.optim.Adam([quantizer.log_chroma.weight], lr=2e-2)
    for _ in range(100):
        optimizer.zero_grad()
        (quantizer(image, torch.tensor([0])) - target).abs().mean().backward()
        optimizer.step()
    assert quantizer.log_chroma.weight.exp().item() == pytest.approx(1.4, abs=0.05)


def test_lab_despeckle_takes_the_median_of_lightness():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 19, 21) * 1.6 - 0.8
    despeckle = LumaDespeckle(num_styles=1, space="lab").eval()
    with torch.no_grad():
        despeckle.raw_strength.weight.fill_(1.0)
        out = despeckle(image, torch.tensor([0, 0]))  # the torch path: no kernel for the lab space
    lab = rgb_to_lab(image)
    expected = lab_to_rgb(torch.cat([window_median(lab[:, :1], 1), lab[:, 1:]], dim=1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert (out - image).abs().max() > 0.05  # the median changed something worth comparing


def test_generator_in_lab_space_round_trips(tmp_path):
    model = trained_like(GuidedFilterGenerator(styles=STYLES, upsampler="joint_bilateral", levels=5, despeckle=1))
    lab_model = trained_like(
        GuidedFilterGenerator(styles=STYLES, upsampler="joint_bilateral", levels=5, despeckle=1, level_space="lab")
    )
    sample, style = torch.rand(2, 3, 20, 30) * 2 - 1, torch.tensor([0, 1])
    with torch.no_grad():
        assert model._runs_cpu_kernels(sample) == cpu_kernels.available()
        assert lab_model._runs_cpu_kernels(sample) == cpu_kernels.available()  # the kernels carry L*a*b* tables
        wide = GuidedFilterGenerator(
            styles=STYLES, upsampler="joint_bilateral", levels=5, despeckle=2, level_space="lab"
        )
        assert not wide.eval()._runs_cpu_kernels(sample)  # a 5x5 median of L*: the torch path
        lab_model.save_pretrained(tmp_path)
        assert json.loads((tmp_path / "config.json").read_text())["level_space"] == "lab"
        loaded = GuidedFilterGenerator.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(loaded(sample, style), lab_model(sample, style))
    with pytest.raises(ValueError, match="level_space"):
        GuidedFilterGenerator(styles=STYLES, levels=5, level_space="LAB")


def test_detail_coring_keeps_edges_and_drops_texture():
    detail = torch.zeros(1, 3, 1, 4)
    detail[..., 0], detail[..., 1], detail[..., 2] = 0.005, 0.02, 0.3  # grey noise, texture, an edge
    cored = core(detail, torch.tensor([0.5 / 0.02**2]))  # τ = 0.02
    ratio = cored / detail.clamp_min(1e-9)
    assert ratio[0, 0, 0, 0] < 0.04  # 1 - exp(-1/32)
    assert 0.35 < ratio[0, 0, 0, 1] < 0.45  # at τ: 1 - exp(-1/2)
    assert ratio[0, 0, 0, 2] == pytest.approx(1.0)
    assert (cored[..., 3] == 0).all()

    model = trained_like(GuidedFilterGenerator(styles=STYLES, photo_detail=True, detail_coring=0.02))
    assert model.coring_scale(torch.tensor([0])).item() == pytest.approx(0.5 / 0.02**2, rel=1e-4)
    sample = torch.rand(2, 3, 16, 20) * 2 - 1
    model.train()(sample, torch.tensor([0, 1])).square().mean().backward()
    assert model.detail_coring.weight.grad.abs().sum() > 0  # the threshold learns
    for bad in (0.05, True, -0.1, 1.5):  # nothing to core without photo_detail; a bool; out of range
        with pytest.raises(ValueError, match="detail_coring"):
            GuidedFilterGenerator(styles=STYLES, photo_detail=bad != 0.05, detail_coring=bad)


def test_photo_smoother_flattens_texture_and_keeps_edges_sharp():
    """The fast guided filter of the photo by itself: texture below ε goes, a step edge stays as sharp as the photo's
    at full resolution (a half-resolution surface would blur it over two pixels); ε is learned per style."""
    torch.manual_seed(0)
    step = torch.where(torch.arange(64) < 31, -0.5, 0.5).expand(1, 3, 64, 64)  # an edge between columns 30 and 31
    texture = 0.03 * torch.randn(1, 3, 64, 64)  # variance 9e-4
    photo = step + texture
    smoother = PhotoSmoother(num_styles=2, radius=1, eps=1e-2)
    with torch.no_grad():
        smoother.log_eps.weight[0] = math.log(1e-4)  # style 0 keeps its texture, style 1 flattens it
    low = F.interpolate(photo, scale_factor=0.5, mode="area")
    with torch.no_grad():
        keep, smooth = smoother(low.expand(2, -1, -1, -1), photo.expand(2, -1, -1, -1), torch.tensor([0, 1]))
    away = list(range(4, 20)) + list(range(42, 60))  # columns away from the edge
    residual = texture[0, :, 8:56, away]
    assert (keep - step[0])[:, 8:56, away].std() > 0.5 * residual.std()
    assert (smooth - step[0])[:, 8:56, away].std() < 0.35 * residual.std()
    assert (smooth[..., 31] - smooth[..., 30]).mean() > 0.9  # the full step in one pixel
    # the fitted models are the guided filter's (self-guided: half the box filters)
    a, b = smoother.coefficients(low, torch.tensor([1]))
    a_ref, b_ref = guided_filter_coefficients(low, low, 1, torch.full((1, 3, 1, 1), 1e-2))
    torch.testing.assert_close((a, b), (a_ref, b_ref), atol=1e-6, rtol=0)


def test_regularization_that_underflows_is_floored():
    """Weights can ask for an ε that is 0 in float32 (log ε = -200): a flat window would divide 0 by 0. Both guided
    filters floor ε at MIN_EPS, so a flat photo stays flat and finite, in torch and in the CPU kernel."""
    model = GuidedFilterGenerator(styles=STYLES, upsampler="guided_filter", photo_detail=True, photo_smoothing=1)
    with torch.no_grad():
        model.photo_smoother.log_eps.weight.fill_(-200.0)
        model.guided_filter.raw_eps.fill_(-200.0)
    assert model.photo_smoother.eps(torch.tensor([0])).min().item() == pytest.approx(MIN_EPS)
    assert model.guided_filter.eps.min().item() == pytest.approx(MIN_EPS)
    photo = torch.full((1, 3, 24, 32), 0.25)
    photo[..., 12:, :] = -0.5  # flat regions with one edge
    with torch.no_grad():
        out = model.eval()(photo, torch.tensor([1]))
        fused = model.photo_smoother.fused_coefficients(F.interpolate(photo, scale_factor=0.5), torch.tensor([1]))
    assert torch.isfinite(out).all() and torch.isfinite(fused).all()


def test_photo_smoothing_starts_as_the_smoothed_photo_and_learns():
    model = GuidedFilterGenerator(styles=STYLES, upsampler="joint_bilateral", photo_detail=True, photo_smoothing=1)
    sample = torch.rand(2, 3, 30, 41) * 2 - 1
    style = torch.tensor([0, 1])
    with torch.no_grad():  # network and tone head the identity, detail weight 1: the smoothed photo itself
        low = F.interpolate(sample, size=(15, 21), mode="area")
        expected = model.photo_smoother(low, sample, style).clamp(-1, 1)
        torch.testing.assert_close(model.eval()(sample, style), expected, atol=1e-5, rtol=0)
    trained_like(model).train()(sample, style).square().mean().backward()
    assert model.photo_smoother.log_eps.weight.grad.abs().sum() > 0  # ε learns per style
    assert model.style_detail.weight.grad.abs().sum() > 0
    for kwargs in ({"photo_smoothing": 1}, {"photo_detail": True, "detail_coring": 0.05, "photo_smoothing": 1}):
        with pytest.raises(ValueError, match="photo_smoothing"):
            GuidedFilterGenerator(styles=STYLES, **kwargs)
    with pytest.raises(ValueError, match="photo_smoothing"):
        GuidedFilterGenerator(styles=STYLES, photo_detail=True, photo_smoothing=-1)


def test_the_photo_smoothing_grows_with_a_photo_larger_than_its_reference_side():
    """``smoothing_reference_side``: ε (noise term included) times the photo's long side over the reference, from 1 to
    `MAX_SMOOTHING_SCALE`; a photo at or under the reference is drawn as without it, a larger one smoother (less of its
    fine texture: the teachers' windows grow with the photo), the same in torch and in the fused CPU kernels."""
    kwargs = dict(styles=STYLES, upsampler="joint_bilateral", photo_detail=True, photo_smoothing=1, smoothing_noise=5.0)
    plain = trained_like(GuidedFilterGenerator(**kwargs)).eval()
    with torch.no_grad():
        plain.photo_smoother.log_eps.weight.fill_(math.log(0.02))  # as strong as the stripes: the scale shows
        plain.style_detail.weight.fill_(1.0)  # the smoothed photo drawn in full
    scaled = GuidedFilterGenerator(**kwargs, smoothing_reference_side=64).eval()  # 32 low-resolution pixels
    scaled.load_state_dict(plain.state_dict())
    smoother, style = scaled.photo_smoother, torch.tensor([1])
    for (height, width), factor in (((20, 32), 1.0), ((30, 24), 1.0), ((20, 48), 1.5), ((20, 60), 1.875),
                                    ((90, 20), MAX_SMOOTHING_SCALE)):  # fmt: skip
        low = torch.rand(1, 3, height, width) * 2 - 1
        assert smoother.size_scale(low).item() == pytest.approx(factor)
        torch.testing.assert_close(smoother.eps(style, low), plain.photo_smoother.eps(style, low) * factor)
    texture = torch.from_numpy(photo_like(64, 48)).permute(2, 0, 1).float().div(127.5).sub(1)[None]
    texture = texture + 0.15 * torch.sin(torch.arange(64.0) * 2.0)  # fine stripes: texture the smoothing removes
    large = F.interpolate(texture, scale_factor=2, mode="bilinear")  # 128 px: twice the reference
    with torch.inference_mode():
        assert torch.equal(scaled(texture, style), plain(texture, style))
        fused, fused_plain = scaled(large, style), plain(large, style)
        with cpu_kernels.disabled():
            torch_path, torch_plain = scaled(large, style), plain(large, style)
        low = F.interpolate(large, scale_factor=0.5, mode="area")
        smoothed, smoothed_plain = smoother(low, large, style), plain.photo_smoother(low, large, style)
        # a tile of a photo twice its size (`photo_side`, which the pipeline passes) is smoothed as that photo
        tile = large[..., :48, :64]
        as_photo = scaled(tile, style, photo_side=128)
        as_itself, own_side = scaled(tile, style), scaled(tile, style, photo_side=64)
    effect = (torch_path - torch_plain).abs().max().item()
    assert effect > 4 / 255 and (fused - fused_plain).abs().max().item() > 4 / 255
    assert (fused - torch_path).abs().max().item() < effect / 4  # the kernels take the same scale as torch
    energy = lambda x: x.diff(dim=-1).abs().mean().item()  # noqa: E731
    assert energy(smoothed) < 0.9 * energy(smoothed_plain)
    assert torch.equal(as_itself, own_side) and (as_photo - as_itself).abs().max().item() > 4 / 255
    crop = low[..., :24, :32]  # its own scale 1; as a tile of a 64-pixel (low-resolution) photo, 2
    torch.testing.assert_close(smoother.eps(style, crop, low_side=64), 2 * plain.photo_smoother.eps(style, crop))
    for side in (True, -1, 63, 20000, 512.0, "512"):
        with pytest.raises(ValueError, match="smoothing_reference_side"):
            GuidedFilterGenerator(**kwargs, smoothing_reference_side=side)
    with pytest.raises(ValueError, match="smoothing_reference_side"):
        GuidedFilterGenerator(styles=STYLES, smoothing_reference_side=512)  # without photo smoothing


def test_noise_variance_measures_noise_and_not_texture_or_edges():
    """Immerkær's estimate in the flattest tenth of the blocks, capped by the chroma's: colour noise independent per
    channel in a photo of smooth ramps, a sharp edge and fine stripes comes out as its luma's variance (0.67σ), the
    same photo without the noise as nearly nothing; texture everywhere, in the luminance, as nearly nothing too (the
    luma alone read it as strong noise), and with noise on it as at most the chroma's; grain the same in every channel
    is taken for texture."""
    generator = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(-0.6, 0.6, 160), torch.linspace(-0.5, 0.5, 240), indexing="ij")
    clean = (x + 0.3 * y).expand(2, 3, -1, -1).clone()  # smooth ramps
    clean[..., 100:, :] -= 0.4  # a step edge
    clean[..., :60, :80] += 0.3 * torch.sign(torch.sin(torch.arange(80.0) * 2.0))  # stripes two pixels wide
    for sigma in (0.01, 0.02, 0.05):
        noisy = clean + sigma * torch.randn(clean.shape, generator=generator)  # colour noise
        assert noise_variance(noisy).sqrt().tolist() == pytest.approx([0.67 * sigma] * 2, rel=0.1)
        grey = clean + sigma * torch.randn((2, 1, 160, 240), generator=generator)  # the same in every channel
        assert noise_variance(grey).max().sqrt() < 0.1 * sigma
    assert noise_variance(clean).max().sqrt() < 0.002  # a tenth of a grey level
    carving = 0.3 * torch.randn((1, 1, 160, 240), generator=generator)  # texture in every block, in the luminance
    carving = F.avg_pool2d(carving, 3, stride=1, padding=1) + torch.tensor([0.1, 0.0, -0.1])[None, :, None, None]
    assert noise_variance(carving).sqrt() < 0.002
    # noise on that texture: the luma's estimate holds both, the cap the chroma's noise (σ, where the luma's is 0.67σ)
    noisy_carving = carving + 0.02 * torch.randn((1, 3, 160, 240), generator=generator)
    assert 0.67 * 0.02 < noise_variance(noisy_carving).sqrt() < 1.1 * 0.02
    small = noise_variance(0.05 * torch.randn(3, 3, 5, 7))  # smaller than one block: one block
    assert small.shape == (3,) and (small > (0.3 * 0.05) ** 2).all() and (small < (3 * 0.05) ** 2).all()
    assert noise_variance(torch.zeros(1, 3, 1, 1)).tolist() == [0.0]


def test_smoothing_noise_flattens_a_noisy_photos_grain_and_leaves_a_clean_photo():
    """``smoothing_noise``: ε grows with each photo's own noise, so the styles that keep the photo's detail draw a
    noisy photo's grain smoothed away and a clean photo as without it; the gain is learned per style and refused
    where it cannot apply."""
    torch.manual_seed(0)
    kwargs = {"styles": STYLES, "upsampler": "joint_bilateral", "photo_detail": True, "photo_smoothing": 1}
    plain = GuidedFilterGenerator(**kwargs, smoothing_eps=1e-3).eval()  # as initialised: the smoothed photo
    adaptive = GuidedFilterGenerator(**kwargs, smoothing_eps=1e-3, smoothing_noise=5.0).eval()
    adaptive.load_state_dict(plain.state_dict(), strict=False)  # the same weights + the gain
    assert adaptive.config["smoothing_noise"] == 5.0
    torch.testing.assert_close(adaptive.photo_smoother.noise_gain.weight, torch.full((2, 1), 5.0))
    y, x = torch.meshgrid(torch.linspace(-0.5, 0.5, 96), torch.linspace(-0.5, 0.5, 128), indexing="ij")
    clean = (x + 0.5 * y).expand(1, 3, -1, -1).clone()
    clean[..., 48:, :] -= 0.5
    noisy = clean + 0.06 * torch.randn(clean.shape)
    style = torch.tensor([1])
    with torch.no_grad():
        torch.testing.assert_close(adaptive(clean, style), plain(clean, style), atol=2e-3, rtol=0)

        def grain(model):  # what is left of the noise: the output's difference from the clean photo's output
            return (model(noisy, style) - model(clean, style))[..., 8:40, 8:-8].std()

        assert grain(adaptive) < 0.65 * grain(plain)  # (0.56: the rest is A · the full-resolution noise)
    trained_like(adaptive).train()(noisy.expand(2, -1, -1, -1), torch.tensor([0, 1])).square().mean().backward()
    assert (adaptive.photo_smoother.noise_gain.weight.grad != 0).all()  # learned, per style
    for bad in (-1.0, float("nan"), float("inf"), 2000.0, True, "8"):
        with pytest.raises(ValueError, match="smoothing_noise"):
            GuidedFilterGenerator(**kwargs, smoothing_noise=bad)
    with pytest.raises(ValueError, match="smoothing_noise"):
        GuidedFilterGenerator(styles=STYLES, photo_detail=True, smoothing_noise=8.0)  # no photo smoothing


def test_lab_stages_in_row_slices_equal_one_pass():
    """At inference the torch path runs the L*a*b* posterizer and median in slices of rows (a halo of the median's
    reach), so a 4K image's peak memory stays small; the slices join into the one-pass result."""
    model = trained_like(
        GuidedFilterGenerator(styles=STYLES, upsampler="joint_bilateral", levels=5, despeckle=1, level_space="lab")
    )
    sample, style = torch.rand(2, 3, 37, 29) * 2 - 1, torch.tensor([0, 1])
    with torch.no_grad(), cpu_kernels.disabled():
        model.despeckle.inference_pixels = None
        whole = model(sample, style)
        model.despeckle.inference_pixels = 29 * 4  # slices of 4 rows
        sliced = model(sample, style)
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=0)


def test_surface_gate_open_is_the_plain_model_and_closed_keeps_the_photo():
    """``surface_gate``: at its start (1) the model is the one without the gate; a style whose gate is closed (0)
    draws on the photo's own low-resolution surface, so nothing the network or the flattener does reaches it."""
    torch.manual_seed(0)
    kwargs = {"upsampler": "joint_bilateral", "flatten_iterations": 1, "photo_detail": True, "photo_smoothing": 1}
    plain = trained_like(GuidedFilterGenerator(styles=STYLES, levels=5, **kwargs))
    gated = GuidedFilterGenerator(styles=STYLES, levels=5, surface_gate=True, **kwargs).eval()
    missing = gated.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["surface_gate.weight"]
    sample, style = torch.rand(2, 3, 33, 40) * 2 - 1, torch.tensor([0, 1])
    with torch.no_grad():
        torch.testing.assert_close(gated(sample, style), plain(sample, style), atol=1e-6, rtol=0)
        gated.surface_gate.weight[0] = 0.0  # toon: closed; painterly stays open
        before = gated(sample, style)
        gated.conv_out.weight.normal_(0, 0.5)  # another network
        gated.flattener.log_sigma.weight.fill_(0.0)
        after = gated(sample, style)
    torch.testing.assert_close(after[0], before[0], atol=1e-6, rtol=0)  # the closed style does not see it
    assert (after[1] - before[1]).abs().max() > 0.05  # the open one does
    torch.testing.assert_close(gated.surface_share(style), torch.tensor([0.0, 1.0]))


def test_surface_gate_learns_fast_and_stays_in_its_range():
    model = trained_like(
        GuidedFilterGenerator(styles=STYLES, upsampler="joint_bilateral", photo_detail=True, surface_gate=True)
    ).train()
    model(torch.rand(2, 3, 20, 24) * 2 - 1, torch.tensor([0, 1])).square().mean().backward()
    assert (model.surface_gate.weight.grad.abs() > 0).all()  # each style's gate gets its own gradient
    with torch.no_grad():
        model.surface_gate.weight.copy_(torch.tensor([[-0.5], [0.5]]))  # g = -5 and 5: clamped to 0 and 2
    share = model.surface_share(torch.tensor([0, 1]))
    torch.testing.assert_close(share, torch.tensor([0.0, 2.0]))
    share.sum().backward()  # straight through the clamp: a style pushed outside can come back
    assert (model.surface_gate.weight.grad.abs() > 0).all()
    with pytest.raises(ValueError, match="surface_gate"):
        GuidedFilterGenerator(styles=STYLES, surface_gate=1)


def test_level_quantizer_set_strength_fixes_one_style_and_clamps():
    quantizer = LevelQuantizer(num_styles=2, levels=5)
    quantizer.set_strength(1, 1.0)  # e.g. at export, a posterizing teacher's full strength
    quantizer.set_strength(0, 3.0)  # clamped to 1
    strength = quantizer.parameters_for(torch.tensor([0, 1]), torch.float32)[3].flatten()
    torch.testing.assert_close(strength, torch.tensor([1.0, 1.0]))
    quantizer.set_strength(0, -1.0)
    assert quantizer.parameters_for(torch.tensor([0]), torch.float32)[3].item() == 0.0
