"""The fused CPU inference kernels (numba) of the guided generator against the torch path they replace."""

import contextlib
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from ghibligan import Cartoonizer
from ghibligan.models import cpu_kernels
from ghibligan.models.color import lab_to_rgb, rgb_to_lab
from ghibligan.models.guided import GuidedFilterGenerator, LumaDespeckle, RegionFlattener, guided_filter_coefficients

from .helpers import photo_like
from .test_guided import trained_like

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="numba is not installed")

STYLES = ["toon", "painterly"]
# every stage the fused output stage covers, on
FUSED = {"upsampler": "joint_bilateral", "flatten_iterations": 2, "photo_detail": True, "levels": 5, "despeckle": 1}


def both_paths(fn):
    """``fn()`` through the kernels and through the torch path, without autograd."""
    with torch.no_grad():
        fused = fn()
        with cpu_kernels.disabled():
            reference = fn()
    return fused, reference


def test_exp_is_accurate_where_weights_matter():
    t = np.linspace(0, 24, 200_001, dtype=np.float32)
    approx = np.array([cpu_kernels._exp_neg(np.float32(v)) for v in t[::97]], dtype=np.float64)
    exact = np.exp(-t[::97].astype(np.float64))
    assert np.max(np.abs(approx / exact - 1)) < 2e-5  # float32 rounding, amplified by the 5 squarings
    assert cpu_kernels._exp_neg(np.float32(0)) == 1.0
    assert cpu_kernels._exp_neg(np.float32(1e4)) < 1e-10  # far beyond the range: negligible, never inf or nan


@pytest.mark.parametrize(
    "size, radius, iterations, dilations",
    [
        ((37, 81), 2, 3, ()),
        ((5, 7), 3, 2, ()),
        ((1, 1), 1, 1, ()),
        ((64, 9), 4, 1, ()),
        ((37, 81), 2, 3, (2, 4, 8)),
        ((6, 11), 1, 0, (3, 16)),  # taps beyond the image: replicated borders
        ((1, 1), 2, 1, (2,)),
    ],
)
def test_flattener_kernel_equals_torch_path(size, radius, iterations, dilations):
    flattener = RegionFlattener(num_styles=2, iterations=iterations, radius=radius, dilations=dilations).eval()
    with torch.no_grad():
        flattener.log_sigma.weight.copy_(torch.tensor([[-2.5], [-1.0]]))  # σ 0.08 (edges kept) and 0.37 (blurs)
        if dilations:
            flattener.log_sigma_dilated.weight.copy_(torch.tensor([[-1.5], [-2.0]]))
    x = torch.rand(2, 3, *size) * 2 - 1
    style = torch.tensor([1, 0])
    fused, reference = both_paths(lambda: flattener(x, style))
    assert fused.shape == x.shape and fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference, atol=2e-5, rtol=0)
    if x[0, 0].numel() > 1:  # (a 1x1 image has nothing to flatten)
        assert (reference - x).abs().max() > 0.05  # the flattener changed something worth comparing


@pytest.mark.parametrize("size", [(37, 81), (1, 1), (2, 9), (9, 1)])
def test_despeckle_kernel_equals_torch_path(size):
    despeckle = LumaDespeckle(num_styles=2).eval()
    with torch.no_grad():
        despeckle.raw_strength.weight.copy_(torch.tensor([[0.1], [0.04]]))  # strengths 1 and 0.4
    x = torch.rand(2, 3, *size) * 2 - 1
    style = torch.tensor([1, 0])
    original = x.clone()
    for layout in (torch.contiguous_format, torch.channels_last):
        fused, reference = both_paths(lambda layout=layout: despeckle(x.contiguous(memory_format=layout), style))
        torch.testing.assert_close(fused, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(x, original, atol=0, rtol=0)  # the input is left alone
    if x[0, 0].numel() > 2:
        assert (reference - x).abs().max() > 0.05  # the median changed something worth comparing
    # in place, where the caller owns a channels-last image (the output stage's): the same values, no copy
    owned = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        result = despeckle(owned, style, inplace=True)
    assert result.data_ptr() == owned.data_ptr()
    torch.testing.assert_close(owned, reference, atol=1e-6, rtol=0)


def test_colour_polynomials_follow_the_curves():
    """The sRGB curves and the cube root of the L*a*b* kernels, each on the range where it is used."""
    from numba import njit

    evaluate = njit(lambda q, c: np.array([cpu_kernels._polynomial(v, c) for v in q], np.float32))
    s = np.linspace(0.04045, 1.0, 20001)
    decoded = evaluate(s.astype(np.float32), cpu_kernels._SRGB_DECODE)
    linear = np.linspace(0.0031308, 1.0, 20001)
    encoded = evaluate((linear**0.25).astype(np.float32), cpu_kernels._SRGB_ENCODE)
    t = np.linspace(0.008856, 1.1, 20001)
    cube_root = evaluate((t**0.25).astype(np.float32), cpu_kernels._CUBE_ROOT)
    assert np.abs(decoded - ((s + 0.055) / 1.055) ** 2.4).max() < 5e-6
    assert np.abs(encoded - (1.055 * linear ** (1 / 2.4) - 0.055)).max() < 5e-6
    assert np.abs(cube_root - np.cbrt(t)).max() < 5e-6


@pytest.mark.parametrize("size", [(37, 81), (1, 1), (2, 9), (9, 1)])
def test_lab_finish_equals_torch_conversion(size):
    """The lab model's last step: 3x3 median of L* (per-image strength), then L*a*b* -> sRGB from tables."""
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, *size) * 2 - 1
    rgb[:, :, :1, :1] = torch.tensor([-1.0, 1.0])[:, None, None, None]  # black and white: the ends of the tables
    lab = rgb_to_lab(rgb)
    strength = torch.tensor([1.0, 0.4])
    despeckle = LumaDespeckle(num_styles=2, space="lab").eval()
    with torch.no_grad():
        despeckle.raw_strength.weight.copy_(torch.tensor([[0.1], [0.04]]))  # strengths 1 and 0.4
        reference = lab_to_rgb(despeckle.despeckle_lab(lab, torch.tensor([0, 1])))
        fused = cpu_kernels.lab_finish(lab.clone(memory_format=torch.channels_last), strength)
    assert fused.shape == rgb.shape
    torch.testing.assert_close(fused, reference, atol=3e-4, rtol=0)  # 0.02 of a grey level
    with torch.no_grad():  # no median: the round trip, black and white (the tables' ends) included
        back = cpu_kernels.lab_finish(lab.clone(memory_format=torch.channels_last), torch.zeros(2))
    torch.testing.assert_close(back, rgb, atol=3e-4, rtol=0)
    if rgb[0, 0].numel() > 2:
        assert (reference - rgb).abs().max() > 0.05  # the median changed something worth comparing


@pytest.mark.parametrize("size", [(7, 5), (301, 203), (1, 1), (2, 9), (64, 64)])
@pytest.mark.parametrize("factor", [2, 3])
def test_area_kernel_equals_interpolate(size, factor):
    photo = torch.rand(2, 3, *size) * 2 - 1
    low_size = (-(-size[0] // factor), -(-size[1] // factor))
    expected = torch.nn.functional.interpolate(photo, size=low_size, mode="area")
    for layout in (torch.contiguous_format, torch.channels_last):
        got = cpu_kernels.area_downsample(photo.contiguous(memory_format=layout), low_size)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernels", [True, False])
def test_a_bf16_model_takes_a_float32_photo(kernels):
    """`Cartoonizer.input_dtype`: on CPU a bf16 guided model is handed float32 photos (its per-pixel stages compute
    in float32 anyway); its network casts what it needs, the ink-line branch included, and the output is float32."""
    model = trained_like(GuidedFilterGenerator(styles=STYLES, line_channels=4, **FUSED))
    model = model.to(torch.bfloat16, memory_format=torch.channels_last)
    sample = (torch.rand(2, 3, 37, 50) * 2 - 1).contiguous(memory_format=torch.channels_last)
    style = torch.tensor([1, 0])
    with torch.no_grad(), contextlib.nullcontext() if kernels else cpu_kernels.disabled():
        from_float32 = model(sample, style)
        from_bf16 = model(sample.bfloat16(), style)
    assert from_float32.dtype == torch.float32 and from_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(from_float32, from_bf16.float(), atol=0.08, rtol=0)  # bf16 rounding, amplified


@pytest.mark.parametrize(
    "kwargs",
    [
        FUSED,
        {**FUSED, "scale_factor": 3},  # an odd factor: one phase has a single tap
        {**FUSED, "scale_factor": 1, "tone_channels": 0},
        {"upsampler": "joint_bilateral", "tone_channels": 8},  # no flattener, detail or posterizer
        {**FUSED, "level_space": "lab"},  # levels and median in CIE L*: the kernels' colour tables
        {**FUSED, "level_space": "lab", "despeckle": 0},
        {**FUSED, "level_space": "lab", "detail_coring": 0.05},  # the photo's detail cored per style
        {**FUSED, "level_space": "lab", "photo_smoothing": 1},  # the detail from the smoothed photo
        {**FUSED, "photo_smoothing": 2, "scale_factor": 3},
        {**FUSED, "level_space": "lab", "photo_smoothing": 1, "surface_gate": True},  # a gate per style
        {**FUSED, "level_space": "lab", "photo_smoothing": 1, "smoothing_noise": 50.0},  # ε raised by the noise
    ],
)
@pytest.mark.parametrize("size", [(64, 64), (37, 81), (5, 7), (1, 1), (2, 300)])
def test_generator_through_kernels_equals_torch_path(size, kwargs):
    torch.manual_seed(0)
    model = trained_like(GuidedFilterGenerator(styles=STYLES, **kwargs))
    with torch.no_grad():  # a visible range σ and levels, so every weight matters
        model.joint_bilateral.raw_sigma.fill_(-2.0)
        if model.detail_coring is not None:  # a threshold where the random photo's detail lies, one per style
            model.detail_coring.weight.copy_(torch.tensor([[-2.0], [-3.0]]))
        if model.photo_smoother is not None:  # ε where the random photo's variances lie, per style and channel
            model.photo_smoother.log_eps.weight.uniform_(-4.0, -1.0)
        if model.surface_gate is not None:  # one style half on the network's surface, one past it
            model.surface_gate.weight.copy_(torch.tensor([[0.05], [0.15]]))
        if model.tone_head is not None:
            for layer in model.tone_head.hidden_layers:
                layer.weight.normal_(0, 0.5)
    sample = (torch.rand(2, 3, *size) * 2 - 1).contiguous(memory_format=torch.channels_last)
    style = torch.tensor([0, 1])
    assert model._runs_cpu_kernels(sample) is False  # autograd on, parameters that need grad: the torch path
    # the L*a*b* conversions are polynomials (3e-6 from the curves), which a hard staircase of levels amplifies at
    # its steps: 5e-4 is 0.03 of a grey level
    atol = 5e-4 if model.level_space == "lab" else 1e-4
    fused, reference = both_paths(lambda: model(sample, style))
    torch.testing.assert_close(fused, reference, atol=atol, rtol=0)
    if model.photo_smoother is not None:  # a style with none of the smoothed photo: its surface is still clamped
        with torch.no_grad():
            model.style_detail.weight[0] = 0.0
            model.conv_out.bias.fill_(0.8)  # a surface past [-1, 1]
        fused, reference = both_paths(lambda: model(sample, style))
        torch.testing.assert_close(fused, reference, atol=atol, rtol=0)
    if model.level_quantizer is not None:  # the user's posterize strength reaches the kernel
        posterize = torch.tensor([1.0, 0.0])
        fused, reference = both_paths(lambda: model(sample, style, posterize=posterize))
        torch.testing.assert_close(fused, reference, atol=atol, rtol=0)


@pytest.mark.parametrize("size", [(64, 64), (37, 81), (5, 7), (1, 1), (2, 300)])
@pytest.mark.parametrize("radius", [1, 2])
def test_self_guided_kernel_equals_torch_path(size, radius):
    torch.manual_seed(0)
    x = torch.rand(2, 3, *size) * 2 - 1
    eps = torch.exp(torch.empty(2, 3).uniform_(-6, 0))  # from edge-keeping to flattening everything
    a, b = guided_filter_coefficients(x, None, radius, eps[:, :, None, None])
    fused = cpu_kernels.self_guided_coefficients(x, eps, radius)
    torch.testing.assert_close(fused, torch.cat([a, b], 1), atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_bundled_model_through_kernels_within_one_grey_level(dtype):
    cartoonizer = Cartoonizer.from_pretrained(dtype=dtype)
    image = photo_like(301, 203)
    for style, name in enumerate(cartoonizer.styles):
        fused, reference = both_paths(lambda style=style: cartoonizer.generate_uint8(image[None], style=style))
        difference = np.abs(fused.astype(int) - reference.astype(int))
        assert difference.max() <= 1, name
        assert (difference > 0).mean() < 1e-3, name  # rounding ties only


def test_kernels_only_run_where_they_may():
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert cpu_kernels.usable(x)
        assert not cpu_kernels.usable(x.to("meta"))  # memory estimates run on the meta device
        with cpu_kernels.disabled():
            assert not cpu_kernels.usable(x)
        assert cpu_kernels.usable(x)  # restored
    assert cpu_kernels.usable(x)  # grad mode on, but nothing that requires grad: nothing for autograd to record
    assert not cpu_kernels.usable(x, torch.zeros(1, requires_grad=True))  # the kernels have no backward
    assert not cpu_kernels.usable(x.requires_grad_())

    model = trained_like(GuidedFilterGenerator(styles=STYLES, **FUSED)).train()
    output = model(torch.rand(1, 3, 16, 16), style=torch.tensor([1]))
    output.mean().backward()  # training goes through the torch path, with gradients
    assert model.flattener.log_sigma.weight.grad is not None and model.joint_bilateral.raw_sigma.grad is not None


def test_concurrent_calls_from_threads_agree_with_one_at_a_time():
    """A Space calls the model from several worker threads at once."""
    model = trained_like(GuidedFilterGenerator(styles=STYLES, **FUSED))
    samples = [torch.rand(1, 3, 96, 130) * 2 - 1 for _ in range(6)]
    style = torch.tensor([1])
    with torch.no_grad():
        expected = [model(sample, style) for sample in samples]
    results = [None] * len(samples)

    def run(index):
        with torch.no_grad():
            results[index] = model(samples[index], style)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(samples))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(torch.equal(result, reference) for result, reference in zip(results, expected, strict=True))


def test_environment_variable_turns_the_kernels_off():
    code = "import torch; from ghibligan.models import cpu_kernels as k; print(k.usable(torch.zeros(1)))"
    run = [sys.executable, "-c", f"import torch; torch.set_grad_enabled(False); {code}"]
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "GHIBLIGAN_CPU_KERNELS": value}
        out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.strip() == expected


def test_generate_uint8_called_directly_records_no_graph():
    """`Cartoonizer.generate_uint8` is public API: called outside any no_grad block it must not build an autograd
    graph (memory), and so it gets the kernels."""
    cartoonizer = Cartoonizer.from_pretrained(dtype="float32")
    pixels = torch.from_numpy(photo_like(64, 48))[None]  # (1, H, W, 3) uint8
    assert torch.is_grad_enabled()
    out = cartoonizer.generate_uint8(pixels)
    assert torch.is_inference(out) and not out.requires_grad
    with torch.no_grad():
        assert torch.equal(out, cartoonizer.generate_uint8(pixels))
