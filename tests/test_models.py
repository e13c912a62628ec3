"""The architectures and their presets: shapes, the reference layout, any input size, the attention U-Net, the output
stage."""

import json

import pytest
import torch

from ghibligan import PatchDiscriminator, ResNetGenerator, UNetGenerator
from ghibligan.models.layers import crop_padding, pad_to_multiple
from ghibligan.models.output_stage import ToneHead
from ghibligan.models.presets import GENERATOR_PRESETS, build_discriminator, build_generator


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_unet_defaults_are_reference_unet_256():
    model = UNetGenerator()
    assert n_params(model) == 54_413_955
    assert model.size_multiple == 256
    # BatchNorm model: convs followed by BN carry no bias, the last transposed conv does (as in pix2pix).
    assert model.conv_in.bias is None and model.conv_out.conv.bias is not None
    # dropout 0.5 in exactly the three decoder blocks above the bottleneck
    dropouts = [type(block.dropout).__name__ for block in model.up_blocks]
    assert dropouts == ["Identity", "Dropout", "Dropout", "Dropout", "Identity", "Identity", "Identity"]


def test_unet_is_deterministic_in_eval():
    model = UNetGenerator(ngf=8).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), model(x))


def test_attention_unet_512_forward_and_backward():
    model = build_generator("attention_unet_512")
    bottleneck = {}
    model.mid_block.register_forward_hook(lambda module, args, out: bottleneck.update(shape=out.shape))
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    y = model(x)
    assert y.shape == x.shape
    assert bottleneck["shape"] == (1, 512, 2, 2)  # 8 stride-2 convs down to 2×2×512
    assert model.down_blocks[-1].conv.kernel_size == (5, 5)
    y.abs().mean().backward()
    assert model.mid_block.attn.in_proj_weight.grad.abs().sum() > 0
    assert model.conv_in.weight.grad.abs().sum() > 0
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("size", [(64, 64), (128, 96), (200, 72)])
def test_attention_works_for_any_bottleneck_size(size):
    model = UNetGenerator(num_downs=5, ngf=8, attention_heads=8).eval()
    assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize(
    "model",
    [
        UNetGenerator(ngf=8),
        UNetGenerator(ngf=8, upsample="resize", norm="instance", innermost_kernel=5, attention_heads=8),
        UNetGenerator(num_downs=5, ngf=8, residual=True, tone_head_channels=4),
        ResNetGenerator(ngf=8, n_blocks=2),
        ResNetGenerator(ngf=8, n_blocks=2, upsample="resize", norm="instance", padding_mode="zeros"),
        ResNetGenerator(ngf=8, n_blocks=1, residual=True, tone_head_channels=4),
    ],
    ids=[
        "unet",
        "unet-attention-resize-instance",
        "unet-output-stage",
        "resnet",
        "resnet-resize-instance",
        "resnet-output-stage",
    ],
)
@pytest.mark.parametrize("size", [(300, 457), (513, 771), (17, 23), (256, 256)])
def test_generators_return_the_input_size(model, size):
    model.eval()
    x = torch.rand(1, 3, *size) * 2 - 1
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_pad_and_crop_round_trip():
    x = torch.randn(1, 3, 300, 457)
    padded, pads = pad_to_multiple(x, 256)
    assert padded.shape[-2:] == (512, 512)
    assert torch.equal(crop_padding(padded, pads), x)
    # the padding mirrors the image (reflect) rather than filling it with zeros
    left, _, top, _ = pads
    assert torch.equal(padded[..., top, left - 1], x[..., 0, 1])
    tiny, tiny_pads = pad_to_multiple(torch.randn(1, 3, 5, 7), 64)  # wider than the image: edge replication
    assert tiny.shape[-2:] == (64, 64) and crop_padding(tiny, tiny_pads).shape[-2:] == (5, 7)


def test_resnet_follows_cartoongan_layout():
    model = ResNetGenerator()
    assert len(model.mid_block) == 8
    assert model.conv_in[0].kernel_size == (7, 7) and model.conv_out.kernel_size == (7, 7)
    assert [block[0][0].stride for block in model.down_blocks] == [(2, 2), (2, 2)]
    assert [block[0][0].out_channels for block in model.down_blocks] == [128, 256]
    assert isinstance(model.up_blocks[0][0], torch.nn.ConvTranspose2d)
    features = model.down_blocks[1](model.down_blocks[0](model.conv_in(torch.randn(1, 3, 64, 64))))
    assert features.shape == (1, 256, 16, 16)


def test_patchgan_is_70x70_and_conditional():
    disc = PatchDiscriminator()
    image, condition = torch.randn(2, 3, 256, 256), torch.randn(2, 3, 256, 256)
    assert disc(image, condition).shape == (2, 1, 30, 30)  # 70×70 receptive field, stride 8
    assert disc.layers[0].in_channels == 6
    # each logit's receptive field: perturbing a pixel far outside a patch leaves that logit unchanged
    disc.eval()
    base = disc(image, condition)
    moved = image.clone()
    moved[..., 200:, 200:] += 5
    assert torch.equal(disc(moved, condition)[..., 0, 0], base[..., 0, 0])
    with pytest.raises(ValueError, match="conditional"):
        disc(image)


def test_cartoongan_discriminator_layout():
    disc = PatchDiscriminator(condition_channels=0, layout="cartoongan", ndf=64)
    assert disc(torch.randn(1, 3, 256, 256)).shape == (1, 1, 64, 64)  # two stride-2 convs
    convs = [m for m in disc.layers if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256, 256, 1]
    with pytest.raises(ValueError, match="unconditional"):
        disc(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (UNetGenerator, {"norm": "layer"}, r"`norm` must be one of \['batch', 'instance', 'none'\], got 'layer'"),
        (UNetGenerator, {"num_downs": 1}, r"`num_downs` must be an integer >= 2, got 1"),
        (UNetGenerator, {"attention_heads": 3}, r"`attention_heads` \(3\) must divide the bottleneck channels"),
        (UNetGenerator, {"dropout": 1.5}, r"`dropout` must be in \[0, 1\), got 1.5"),
        (UNetGenerator, {"upsample": "pixelshuffle"}, r"`upsample` must be one of"),
        (UNetGenerator, {"innermost_kernel": 7}, r"`innermost_kernel` must be 3, 4 or 5"),
        (ResNetGenerator, {"n_blocks": -1}, r"`n_blocks` must be an integer >= 0, got -1"),
        (ResNetGenerator, {"padding_mode": "circularish"}, r"`padding_mode` must be one of"),
        (PatchDiscriminator, {"layout": "stylegan"}, r"`layout` must be one of \['pix2pix', 'cartoongan'\]"),
        (PatchDiscriminator, {"ngf": 3}, r"unexpected keyword argument 'ngf'"),
    ],
)
def test_invalid_config_fails_at_construction(cls, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        cls(**kwargs)


def test_unet_skip_carries_leaky_relu_of_features_like_the_reference():
    """pix2pix's in-place LeakyReLU means the concatenated skip is LeakyReLU(x), not x."""
    model = UNetGenerator(num_downs=5, ngf=8, up_activation="leaky_relu").eval()
    hidden = torch.randn(1, 8, 16, 16)
    _, skip = model.down_blocks[0](hidden)
    assert torch.equal(skip, torch.nn.functional.leaky_relu(hidden, 0.2))


def test_residual_unet_predicts_a_change_to_the_input():
    model = UNetGenerator(num_downs=5, ngf=8, residual=True).eval()
    x = torch.rand(1, 3, 50, 70) * 2 - 1
    assert torch.equal(model(x), x)  # the last conv starts at zero: the identity, at full resolution
    torch.nn.init.normal_(model.conv_out.conv.weight, 0.0, 0.02)
    assert not torch.equal(model(x), x)  # and the change is what it learns
    assert not torch.equal(UNetGenerator(num_downs=5, ngf=8).eval()(x), x)  # pix2pix's init for a plain U-Net
    with pytest.raises(ValueError, match="residual=True` needs in_channels == out_channels"):
        UNetGenerator(in_channels=1, out_channels=3, residual=True)


def test_tone_head_is_a_per_pixel_colour_map_that_starts_as_the_identity():
    """`tone_head_channels` adds clamp(x + MLP(x)) after the output: pointwise, identity at init, any size."""
    model = UNetGenerator(num_downs=5, ngf=8, residual=True, tone_head_channels=6).eval()
    x = torch.rand(1, 3, 45, 61) * 2 - 1
    assert torch.equal(model(x), x)  # residual U-Net and tone head both start as the identity
    head = model.tone_head
    torch.nn.init.normal_(head.mlp[-1].weight)
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    pixels = image.flatten(2).transpose(1, 2).reshape(-1, 3, 1, 1)  # each pixel as a 1×1 image
    by_pixel = head(pixels).reshape(1, 64, 3).transpose(1, 2).reshape(1, 3, 8, 8)
    torch.testing.assert_close(head(image), by_pixel)  # a function of each pixel's own colour
    assert not torch.equal(head(image), image)
    tall = torch.rand(2, 3, 150, 20) * 2 - 1  # inference runs slices of rows: the same result as all at once
    head.inference_pixels = 20 * 64  # 64 rows a slice: 3 slices, the last one shorter
    sliced = []
    handle = head.mlp.register_forward_hook(lambda module, args, output: sliced.append(output.shape[-2]))
    torch.testing.assert_close(head.eval()(tall), head.train()(tall))
    handle.remove()
    assert sliced == [64, 64, 22, 150]  # eval: three slices; train: one pass
    widths = [layer.out_channels for layer in head.mlp if isinstance(layer, torch.nn.Conv2d)]
    assert widths == [6, 6, 3] and all(layer.kernel_size == (1, 1) for layer in head.mlp[::2])
    assert UNetGenerator(ngf=8, tone_head_channels=0).tone_head is None
    with pytest.raises(ValueError, match="tone_head_channels"):
        UNetGenerator(tone_head_channels=-2)
    assert isinstance(head, ToneHead)


@pytest.mark.parametrize("kwargs", [{}, {"residual": True}, {"tone_head_channels": 6}])
def test_resnet_output_stage_is_off_by_default_and_starts_as_the_identity(kwargs):
    plain = ResNetGenerator(ngf=8, n_blocks=1)
    model = ResNetGenerator(ngf=8, n_blocks=1, **kwargs).eval()
    x = torch.rand(1, 3, 30, 42) * 2 - 1
    assert plain.tone_head is None and not plain.residual  # the paper's generator
    if kwargs.get("residual"):
        assert torch.equal(model(x), x)  # conv_out starts at zero: the identity
        assert n_params(model) == n_params(plain)  # residual adds no weights
    else:
        assert not torch.equal(model(x), x)
    if kwargs.get("tone_head_channels"):
        # the tone head starts as the identity on top of the ResNet's own output
        torch.testing.assert_close(model(x), model.tone_head(model(x)), rtol=0, atol=0)
        torch.nn.init.normal_(model.tone_head.mlp[-1].weight)
        assert not torch.equal(model.tone_head(x), x)
    with pytest.raises(ValueError, match="residual=True` needs in_channels == out_channels"):
        ResNetGenerator(in_channels=1, residual=True)


def test_removed_full_res_channels_is_not_an_argument():
    with pytest.raises(TypeError, match="full_res_channels"):
        UNetGenerator(full_res_channels=8)


# -- presets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "cls", "parameters"),
    [
        ("unet_256", UNetGenerator, 54_413_955),
        ("unet_128", UNetGenerator, 41_828_995),
        ("attention_unet_512", UNetGenerator, 57_824_899),
        ("bundled", UNetGenerator, 1_044_902),
        ("cartoongan_resnet", ResNetGenerator, 11_125_507),
        ("resnet_9blocks", ResNetGenerator, 12_306_179),
    ],
)
def test_presets_build_their_documented_models(preset, cls, parameters):
    model = build_generator(preset)
    assert type(model) is cls and type(model).__name__ == GENERATOR_PRESETS[preset].class_name
    assert n_params(model) == parameters
    config = model.config
    assert {key: config[key] for key in GENERATOR_PRESETS[preset].kwargs} == GENERATOR_PRESETS[preset].kwargs
    assert json.loads(json.dumps(config)) == config  # JSON-able, as config.json needs


def test_presets_say_what_they_are():
    assert GENERATOR_PRESETS["unet_128"].kwargs["num_downs"] == 7
    assert build_generator("unet_256").config == UNetGenerator().config  # the class defaults are pix2pix's unet_256
    assert build_generator().config == UNetGenerator().config  # and the default preset
    assert build_generator("cartoongan_resnet").config == ResNetGenerator().config  # CartoonGAN's 8 blocks
    assert len(build_generator("resnet_9blocks").mid_block) == 9
    attention = build_generator("attention_unet_512")
    assert attention.down_blocks[-1].conv.kernel_size == (5, 5) and attention.mid_block.attn.num_heads == 8


def test_preset_overrides_replace_its_kwargs_and_none_keeps_them():
    model = build_generator("bundled", ngf=8, tone_head_channels=None, residual=None)
    assert model.config["ngf"] == 8
    assert model.config["tone_head_channels"] == 32 and model.config["residual"] is True  # None: the preset's value
    assert model.config["num_downs"] == 5
    assert build_generator("unet_256", upsample="resize").config["upsample"] == "resize"
    assert GENERATOR_PRESETS["bundled"].kwargs["ngf"] == 16  # building does not change the preset


def test_unknown_preset_or_kwarg_is_named():
    with pytest.raises(ValueError, match=r"Unknown generator preset 'unet_512': choose one of \[.*'unet_256'"):
        build_generator("unet_512")
    with pytest.raises(ValueError, match=r"UNetGenerator \(preset 'unet_256'\) does not take \['n_blocks'\]"):
        build_generator("unet_256", n_blocks=3)
    with pytest.raises(ValueError, match=r"does not take \['full_res_channels'\]"):
        build_generator("bundled", full_res_channels=0)
    with pytest.raises(ValueError, match=r"`ngf` must be an integer >= 1, got 0"):
        build_generator("cartoongan_resnet", ngf=0)


def test_build_discriminator_follows_each_paper():
    pix2pix = build_discriminator()
    assert pix2pix.config["condition_channels"] == 3 and pix2pix.config["layout"] == "pix2pix"
    cartoongan = build_discriminator("cartoongan", ndf=8)
    assert cartoongan.config["condition_channels"] == 0 and cartoongan.config["ndf"] == 8
    assert build_discriminator("cartoongan", condition_channels=3, n_layers=None).config["condition_channels"] == 3
    with pytest.raises(ValueError, match=r"PatchDiscriminator does not take \['ngf'\]"):
        build_discriminator(ngf=8)


def test_vgg19_features_load_from_a_file_or_folder_and_fail_naming_the_source(tmp_path):
    from safetensors.torch import save_file

    from ghibligan.models.vgg import VGG19Features

    source = VGG19Features()
    torch.nn.init.normal_(source.features[0].weight)
    save_file(dict(source.state_dict()), tmp_path / "model.safetensors")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for weights in (tmp_path / "model.safetensors", tmp_path):
        loaded = VGG19Features.from_pretrained(weights)
        assert torch.equal(loaded(x), source(x)) and not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(RuntimeError, match=r"no such file .*missing\.safetensors.*pass `weights`"):
        VGG19Features.from_pretrained(tmp_path / "missing.safetensors")
    save_file({"encoder.weight": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(RuntimeError, match=r"other\.safetensors' is not a VGG19 checkpoint"):
        VGG19Features.from_pretrained(tmp_path / "other.safetensors")


def test_package_import_is_lazy_and_exports_every_public_name():
    """`import ghibligan` (and so `ghibligan --help`) must not import torch; the public names still resolve."""
    import subprocess
    import sys

    code = (
        "import sys, ghibligan; assert 'torch' not in sys.modules, 'torch imported eagerly'; "
        "[getattr(ghibligan, name) for name in ghibligan.__all__]; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
