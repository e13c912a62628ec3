"""ONNX export and the onnxruntime backend: every generator class, any size, every style, within 2 grey levels."""

import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi, constants
from PIL import Image
from torch import nn

from ghibligan import Cartoonizer, PatchDiscriminator, ResNetGenerator, UNetGenerator
from ghibligan.cli import main
from ghibligan.image_io import tensor_to_uint8
from ghibligan.models.guided import GuidedFilterGenerator
from ghibligan.models.layers import crop_padding, pad_to_multiple
from ghibligan.onnx_export import export_onnx, onnx_cache_dir
from ghibligan.onnx_generator import OnnxGenerator, load_onnx_generator
from ghibligan.pipeline import bundled_model_path
from tests.helpers import photo_like, put_in_hub_cache, underexposed

SIZES = [(64, 64), (457, 301), (1500, 1000)]  # width × height


class TinyStyleGenerator(nn.Module):
    """A stand-in that follows the style generator's interface: config ``styles``, ``.styles``,
    ``forward(sample, style)`` with ``style`` a (B,) LongTensor or None."""

    size_multiple = 4

    def __init__(self, styles: list[str] | None = None):
        super().__init__()
        self.styles = list(styles or ["ghibli", "toon", "sketch"])
        self.embed = nn.Embedding(len(self.styles), 8)
        self.conv_in = nn.Conv2d(3, 8, 4, stride=2, padding=1)
        self.down = nn.Conv2d(8, 8, 4, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
        self.conv_out = nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1)

    def forward(self, sample: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        sample, pads = pad_to_multiple(sample, self.size_multiple)
        if style is None:
            style = torch.zeros(sample.shape[0], dtype=torch.long, device=sample.device)
        hidden = F.relu(self.conv_in(sample)) + self.embed(style)[:, :, None, None]  # (B, 8, H/2, W/2)
        hidden = F.relu(self.up(F.relu(self.down(hidden))))
        return crop_padding(torch.tanh(self.conv_out(hidden)), pads)


class SizeBranchGenerator(nn.Module):
    """Branches on the image width: no single graph can hold it."""

    size_multiple = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        if sample.shape[-1] > 100:
            return torch.tanh(self.conv(sample))
        return torch.tanh(-self.conv(sample))


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every weight and BN statistic (zero-initialised layers included), so outputs depend on everything."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


MODELS = {
    "unet_residual_tone_attention": lambda: UNetGenerator(
        num_downs=5, ngf=8, attention_heads=2, residual=True, tone_head_channels=8, dropout=0.0
    ),
    "unet_resize_instance": lambda: UNetGenerator(num_downs=4, ngf=8, norm="instance", upsample="resize"),
    "resnet": lambda: ResNetGenerator(ngf=8, n_blocks=1),
    "styles": lambda: TinyStyleGenerator(),
    "guided_styles": lambda: GuidedFilterGenerator(  # every branch: guide map, tone head, ink lines
        ["ghibli", "toon", "sketch"], channels=4, num_levels=2, num_blocks=1, guide_channels=4, line_channels=4
    ),
    "guided_bilateral": lambda: GuidedFilterGenerator(
        ["ghibli", "toon", "sketch"],
        channels=4,
        num_levels=2,
        num_blocks=1,
        upsampler="joint_bilateral",
        flatten_iterations=1,
        flatten_radius=1,
        flatten_dilations=[2, 3],
        levels=5,
        despeckle=1,
        surface_gate=True,
        photo_detail=True,
        photo_smoothing=1,
        smoothing_noise=50.0,  # ε raised by each photo's noise: a sort of its blocks in the graph
        smoothing_reference_side=400,  # and by its size (x1, x1.14, x2 at SIZES): sums of ones in the graph
    ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = trained_looking(MODELS[request.param]())
    path = export_onnx(model, tmp_path_factory.mktemp(request.param))
    return model, OnnxGenerator(path, num_threads=2)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_onnxruntime_matches_torch_at_odd_sizes_and_every_style(exported, width, height):
    model, runner = exported
    image = torch.from_numpy(photo_like(width, height)).permute(2, 0, 1).float().div(127.5).sub(1)[None]
    styles = range(len(model.styles)) if hasattr(model, "styles") else [None]
    for style in styles:
        style_tensor = None if style is None else torch.tensor([style])
        with torch.no_grad():
            expected = model(image) if style is None else model(image, style_tensor)
        got = runner(image.numpy(), None if style is None else np.array([style]))
        assert got.shape == (1, 3, height, width)
        assert expected.std() > 0.05  # a real image, not a constant that any graph would match
        assert np.abs(got - expected.numpy()).max() < 1e-4
        grey_levels = np.abs(
            tensor_to_uint8(torch.from_numpy(got[0])).astype(int) - tensor_to_uint8(expected[0]).astype(int)
        )
        assert grey_levels.max() <= 2


def test_batch_is_dynamic_and_styles_differ(exported):
    model, runner = exported
    images = torch.rand(3, 3, 37, 53) * 2 - 1
    if hasattr(model, "styles"):
        style = torch.tensor([0, 1, 2])
        got = runner(images, style)  # torch in → torch out
        with torch.no_grad():
            expected = model(images, style)
        swapped = runner(images, style.flip(0))
        assert not torch.allclose(got[0], swapped[0], atol=1e-3)  # the style input reaches the graph
        torch.testing.assert_close(runner(images, 1), runner(images, torch.tensor([1, 1, 1])))  # one for all
        torch.testing.assert_close(runner(images), runner(images, 0))  # None: the first style
    else:
        got = runner(images)
        with torch.no_grad():
            expected = model(images)
    assert isinstance(got, torch.Tensor) and got.shape == (3, 3, 37, 53)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_file_is_opset_18_with_dynamic_axes_and_metadata(exported):
    model, runner = exported
    proto = onnx.load(str(runner.path), load_external_data=False)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sample = proto.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in sample] == [True, False, True, True]
    assert runner.size_multiple == model.size_multiple
    assert f"pads them to multiples of {model.size_multiple}" in proto.doc_string
    assert runner.styles == getattr(model, "styles", None)
    if runner.styles is not None:
        assert [i.name for i in proto.graph.input] == ["sample", "style"]
        assert proto.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_file_runs_on_plain_onnxruntime_at_any_size(exported):
    """No ghibligan at inference: the graph pads (mirroring, or repeating the edge for tiny images) and crops itself."""
    model, runner = exported
    session = onnxruntime.InferenceSession(str(runner.path), providers=["CPUExecutionProvider"])
    for height, width in [(5, 7), (19, 70), (61, 45)]:  # pads wider than the image, on one side only, and both
        image = torch.rand(2, 3, height, width) * 2 - 1
        feeds = {"sample": image.numpy()}
        style = torch.tensor([1, 2]) if runner.styles else None
        if style is not None:
            feeds["style"] = style.numpy()
        with torch.no_grad():
            expected = model(image) if style is None else model(image, style)
        (got,) = session.run(None, feeds)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)


def test_style_out_of_range_and_style_without_styles_are_refused(exported):
    _, runner = exported
    image = np.zeros((1, 3, 16, 16), dtype=np.float32)
    if runner.styles is None:
        with pytest.raises(ValueError, match="has no styles"):
            runner(image, np.array([0]))
    else:
        with pytest.raises(ValueError, match=r"`style` must be indices in \[0, 3\)"):
            runner(image, np.array([3]))


# -- refusals ---------------------------------------------------------------------------------------------------------


def test_export_refuses_a_model_that_is_not_a_generator(tmp_path):
    with pytest.raises(ValueError, match="Cannot export PatchDiscriminator: it has no integer `size_multiple`"):
        export_onnx(PatchDiscriminator(), tmp_path)
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module"):
        export_onnx("my-unet", tmp_path)
    assert not list(tmp_path.iterdir())


def test_export_refuses_a_forward_that_branches_on_the_size(tmp_path):
    with pytest.raises(ValueError, match="Cannot export SizeBranchGenerator"):
        export_onnx(SizeBranchGenerator(), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_export_refuses_an_old_opset(tmp_path):
    with pytest.raises(ValueError, match="`opset_version` must be an integer >= 17, got 13"):
        export_onnx(ResNetGenerator(ngf=8, n_blocks=1), tmp_path, opset_version=13)


def test_runner_refuses_a_foreign_onnx_file(tmp_path):
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["sample"], ["image"])],
        "plain",
        [helper.make_tensor_value_info("sample", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), tmp_path / "plain.onnx"
    )
    with pytest.raises(ValueError, match="not written by ghibligan's exporter"):
        OnnxGenerator(tmp_path / "plain.onnx")


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = UNetGenerator(num_downs=4, ngf=8, tone_head_channels=4).train()
    export_onnx(model, tmp_path)
    assert model.training and "inference_pixels" not in model.tone_head.__dict__


# -- checkpoints, the pipeline, the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A residual U-Net with a tone head, saved with model.onnx beside model.safetensors."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("checkpoint")
    model = trained_looking(UNetGenerator(num_downs=5, ngf=8, residual=True, tone_head_channels=8), seed=1)
    model.save_pretrained(folder)
    export_onnx(model, folder)
    return folder


def test_pipeline_backend_matches_torch_with_tiling_and_alpha(checkpoint):
    rgba = np.dstack([photo_like(301, 203, seed=3), np.full((203, 301), 128, np.uint8)])
    torch_pipe = Cartoonizer.from_pretrained(checkpoint, device="cpu", dtype="float32")
    onnx_pipe = Cartoonizer.from_pretrained(checkpoint, dtype="auto", backend="onnxruntime")
    assert isinstance(onnx_pipe.generator, OnnxGenerator) and onnx_pipe.dtype == torch.float32
    assert onnx_pipe.device.type == "cpu"  # the session's device, whatever torch would pick
    for tile in (0, 128):  # untiled, and 128-px tiles blended over a 32-px overlap
        expected = np.asarray(torch_pipe(rgba, tile=tile, tile_overlap=32)[0], dtype=int)
        got = np.asarray(onnx_pipe(rgba, tile=tile, tile_overlap=32)[0], dtype=int)
        assert got.shape == (203, 301, 4)
        assert np.abs(got - expected).max() <= 2
    batch = onnx_pipe([photo_like(64, 48, seed=s) for s in range(3)], batch_size=3)
    assert [image.size for image in batch] == [(64, 48)] * 3


def test_pipeline_backend_refuses_half_precision_and_unknown_backends(checkpoint):
    with pytest.raises(ValueError, match=r"runs the exported float32 graph; got dtype=torch\.bfloat16"):
        Cartoonizer.from_pretrained(checkpoint, device="cpu", dtype="bfloat16", backend="onnxruntime")
    with pytest.raises(ValueError, match=r"`backend` must be one of \['torch', 'onnxruntime'\], got 'tensorrt'"):
        Cartoonizer.from_pretrained(checkpoint, backend="tensorrt")


def test_hub_repo_with_model_onnx_loads_through_hf_hub_download(checkpoint):
    put_in_hub_cache(checkpoint, "ghibligan-test/unet-onnx")
    runner = OnnxGenerator.from_pretrained("ghibligan-test/unet-onnx")
    assert Path(constants.HF_HUB_CACHE) in runner.path.parents
    assert runner.class_name == "UNetGenerator" and runner.config["tone_head_channels"] == 8


def test_checkpoint_without_model_onnx_is_exported_once_and_cached(checkpoint, tmp_path):
    shutil.copytree(checkpoint, tmp_path / "ckpt", ignore=shutil.ignore_patterns("*.onnx"))
    put_in_hub_cache(tmp_path / "ckpt", "ghibligan-test/unet-no-onnx")
    with pytest.raises(FileNotFoundError, match=r"has no model\.onnx\. Export one"):
        OnnxGenerator.from_pretrained(tmp_path / "ckpt")
    first = load_onnx_generator("ghibligan-test/unet-no-onnx")
    assert onnx_cache_dir() in first.path.parents
    modified = first.path.stat().st_mtime_ns
    second = load_onnx_generator(tmp_path / "ckpt")  # same weights: the same cache entry, not a new export
    assert second.path == first.path and second.path.stat().st_mtime_ns == modified
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 45, 70)).astype(np.float32)
    np.testing.assert_allclose(second(image), OnnxGenerator(checkpoint / "model.onnx")(image), atol=1e-5)


def test_cli_export_onnx_and_cartoonize_with_onnxruntime(checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns("*.onnx"))
    uploads = []
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kwargs: uploads.append(kwargs) or "https://hf.co/c/1")
    assert main(["export-onnx", "--model", str(folder), "-o", str(folder), "--push_to_hub", "you/unet"]) == 0
    assert (folder / "model.onnx").is_file()
    assert uploads == [
        {
            "path_or_fileobj": str(folder / "model.onnx"),
            "path_in_repo": "model.onnx",
            "repo_id": "you/unet",
            "commit_message": "Add model.onnx (ghibligan export-onnx)",
        }
    ]
    Image.fromarray(photo_like(97, 61)).save(tmp_path / "photo.png")
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.png"
        argv = ["cartoonize", str(tmp_path / "photo.png"), "-o", str(out), "--model", str(folder)]
        dtype = ["--dtype", "float32"] if backend == "torch" else []  # auto would pick bf16 on some CPUs
        assert main([*argv, "--backend", backend, "--device", "cpu", *dtype]) == 0
    difference = np.abs(
        np.asarray(Image.open(tmp_path / "torch.png"), int) - np.asarray(Image.open(tmp_path / "onnxruntime.png"), int)
    )
    assert difference.max() <= 2


def test_cli_export_onnx_reports_a_bad_model_folder(tmp_path, capsys):
    assert main(["export-onnx", "--model", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_bundled_model_runs_on_onnxruntime_like_torch(caplog):
    """The default model ships its ONNX export (no export on first use), and it is the shipped weights' graph: a
    retrained model whose model.onnx was not exported again fails here."""
    image = photo_like(457, 301, seed=5)
    with caplog.at_level(logging.WARNING, logger="ghibligan"):
        onnx_pipe = Cartoonizer.from_pretrained(backend="onnxruntime", device="cpu")
    assert onnx_pipe.generator.path == bundled_model_path() / "model.onnx"
    assert "exporting" not in caplog.text
    torch_pipe = Cartoonizer.from_pretrained(device="cpu", dtype="float32")
    assert onnx_pipe.styles == torch_pipe.styles == ["ghibli", "toon", "painterly"]
    # the pipeline's metadata travels in the file: ghibli drawn at 512 px, and a dark photo at a normal exposure
    assert onnx_pipe.work_sides == torch_pipe.work_sides and onnx_pipe.exposure_targets == {"ghibli": 0.39}
    assert onnx_pipe.contour_lines == torch_pipe.contour_lines and set(onnx_pipe.contour_lines) == {"toon"}
    assert onnx_pipe.joint_upsampling == torch_pipe.joint_upsampling == {"toon": 24.0}
    dark = underexposed(image, 2)
    got = np.asarray(onnx_pipe(dark, style="ghibli")[0], dtype=int)
    assert np.abs(got - np.asarray(torch_pipe(dark, style="ghibli")[0], dtype=int)).max() <= 2
    assert np.abs(got - np.asarray(onnx_pipe(dark, style="ghibli", exposure_target=0)[0], dtype=int)).mean() > 1
    for style in onnx_pipe.styles:
        got = np.asarray(onnx_pipe(image, style=style)[0], dtype=int)
        expected = np.asarray(torch_pipe(image, style=style)[0], dtype=int)
        assert np.abs(got - expected).max() <= 2, style
