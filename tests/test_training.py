"""Training: one GAN step per objective in-process, the script's arguments and builders, checkpoints, validation, and
two real `accelerate launch` runs (DDP on 2 CPU processes with crash-safe resume; CartoonGAN in bf16)."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import save_file

from ghibligan import Cartoonizer, GuidedFilterGenerator, PatchDiscriminator, ResNetGenerator, UNetGenerator
from ghibligan.checkpoints import list_checkpoints, resume_candidates, save_checkpoint
from ghibligan.cli import main as ghibligan_main
from ghibligan.losses import CartoonGANObjective, Pix2PixObjective
from ghibligan.models.output_stage import ToneHead
from ghibligan.models.vgg import VGG19Features
from ghibligan.training import fit_tone_head, training_step, validate

from .helpers import photo_like

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = ["--preset", "unet_256", "--ngf", "8", "--num_downs", "6", "--ndf", "8", "--resolution", "64"]

_spec = importlib.util.spec_from_file_location("train_accelerate", ROOT / "train_accelerate.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)


def crops(count: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    """A batch of photo-like crops and their "cartoons" (inverted), in [-1, 1]."""
    photos = torch.stack([torch.from_numpy(photo_like(size, size, seed=i)).permute(2, 0, 1) for i in range(count)])
    photos = photos.float() / 127.5 - 1  # (B, 3, size, size)
    return {"input": photos, "target": -photos, "target_smoothed": -photos.flip(-1)}


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def moved(model: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def prepare_gan(accelerator, generator, discriminator):
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.5, 0.999)) for m in (generator, discriminator)]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0) for o in optimizers]
    g, d, *rest = accelerator.prepare(generator, discriminator, *optimizers, *schedulers)
    return g, d, tuple(rest[:2]), tuple(rest[2:])


def test_pix2pix_training_step_moves_g_and_d_with_finite_losses():
    accelerator = Accelerator(cpu=True)
    generator = UNetGenerator(num_downs=5, ngf=8)
    discriminator = PatchDiscriminator(ndf=8, n_layers=2)
    g_before, d_before = snapshot(generator), snapshot(discriminator)
    generator, discriminator, optimizers, schedulers = prepare_gan(accelerator, generator, discriminator)
    logs = training_step(
        accelerator, Pix2PixObjective(), generator, discriminator, optimizers, schedulers, crops(), step=0
    )
    assert set(logs) == {"loss_d", "loss_g_gan", "loss_g_l1"}
    assert all(torch.isfinite(value) for value in logs.values())
    assert moved(generator, g_before) and moved(discriminator, d_before)
    assert all(p.requires_grad for p in discriminator.parameters())  # D is unfrozen again after the G step


def test_cartoongan_training_step_trains_g_alone_during_init_then_g_and_d():
    accelerator = Accelerator(cpu=True)
    objective = CartoonGANObjective(vgg=VGG19Features(), init_steps=1)
    generator = ResNetGenerator(ngf=8, n_blocks=1)
    discriminator = PatchDiscriminator(condition_channels=0, ndf=8, layout="cartoongan")
    generator, discriminator, optimizers, schedulers = prepare_gan(accelerator, generator, discriminator)
    g_before, d_before = snapshot(generator), snapshot(discriminator)

    logs = training_step(accelerator, objective, generator, discriminator, optimizers, schedulers, crops(), step=0)
    assert set(logs) == {"loss_g_content"} and torch.isfinite(logs["loss_g_content"])
    assert moved(generator, g_before) and not moved(discriminator, d_before)  # content-only initialization

    g_before = snapshot(generator)
    logs = training_step(accelerator, objective, generator, discriminator, optimizers, schedulers, crops(), step=1)
    assert set(logs) == {"loss_d", "loss_g_gan", "loss_g_content"}
    assert all(torch.isfinite(value) for value in logs.values())
    assert moved(generator, g_before) and moved(discriminator, d_before)


def test_fit_tone_head_learns_a_per_pixel_posterization():
    """The warm start fits clamp(x + MLP(x)) to a pointwise target (two flat levels per channel) from a few crops."""

    def posterize(image):
        return torch.where(image > 0, 0.5, -0.5)

    samples = [{"input": p, "target": posterize(p)} for p in (torch.rand(8, 3, 16, 16) * 2 - 1)]
    head, test = ToneHead(3, 16), torch.rand(1, 3, 32, 32) * 2 - 1
    before = (head(test) - posterize(test)).abs().mean().item()  # the identity: 0.25 on average
    fit_tone_head(head, samples, steps=1000)
    after = (head(test) - posterize(test)).abs().mean().item()
    assert after < 0.4 * before, (before, after)
    with pytest.raises(ValueError, match="no readable training pairs"):
        fit_tone_head(head, [], steps=1)


def test_validation_cartoonizes_whole_images_without_touching_the_model():
    generator = UNetGenerator(num_downs=5, ngf=8, residual=True).train()  # starts as the identity
    before = snapshot(generator)
    photos = [Image.fromarray(photo_like(70, 50, seed=i)) for i in range(2)]  # not a multiple of 2**5
    grid, metrics = validate(generator, [(p, p) for p in photos], cell_size=32)
    assert grid.size == (3 * 32, 2 * 32)
    assert metrics["val/l1"] == 0 and metrics["val/psnr"] == float("inf")  # the identity, at full size
    half, _ = validate(generator, [(p, p) for p in photos], max_side=35, cell_size=32)
    assert half.size == grid.size
    assert generator.training and not moved(generator, before)
    dark = [(p, Image.new("RGB", p.size)) for p in photos]
    assert validate(generator, dark)[1]["val/psnr"] < 20
    with pytest.raises(ValueError, match="`pairs` is empty"):
        validate(generator, [])


def test_checkpoints_hold_a_loadable_generator_and_keep_the_newest(tmp_path):
    accelerator = Accelerator(cpu=True)
    generator = accelerator.prepare(UNetGenerator(num_downs=5, ngf=8))
    for step in (2, 4, 6):
        save_checkpoint(accelerator, tmp_path, step, accelerator.unwrap_model(generator), total_limit=2)
    (tmp_path / "checkpoint-8.tmp").mkdir()  # what an interrupted save leaves: never "latest"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert resume_candidates(tmp_path, "latest") == [tmp_path / "checkpoint-6", tmp_path / "checkpoint-4"]
    assert resume_candidates(tmp_path / "empty", "latest") == []
    cartoonizer = Cartoonizer.from_pretrained(tmp_path / "checkpoint-6" / "generator", device="cpu")
    assert cartoonizer(photo_like(40, 30))[0].size == (40, 30)
    with pytest.raises(FileNotFoundError, match="`resume_from_checkpoint` 'nowhere' is not a folder"):
        resume_candidates(tmp_path, "nowhere")


# -- the script's arguments and builders, in-process ------------------------------------------------------------------


def parse(*argv):
    return train_script.parse_args(["--train_data_dir", "pairs", "--output_dir", "out", *map(str, argv)])


def test_presets_with_flag_overrides_build_the_models_each_objective_needs():
    accelerator = Accelerator(cpu=True)
    generator, discriminator = train_script.build_models(parse("--preset", "bundled", "--ngf", "8"), accelerator)
    assert generator.config["ngf"] == 8 and generator.config["tone_head_channels"] == 32  # preset + override
    assert discriminator.config["condition_channels"] == 3 and discriminator.config["layout"] == "pix2pix"
    generator, discriminator = train_script.build_models(
        parse("--objective", "cartoongan", "--generator", "resnet", "--n_blocks", "1", "--norm", "instance"),
        accelerator,
    )
    assert isinstance(generator, ResNetGenerator) and generator.config["n_blocks"] == 1
    assert discriminator.config["condition_channels"] == 0 and discriminator.config["norm"] == "instance"
    assert train_script.build_models(parse(), accelerator)[0].config["num_downs"] == 8  # unet_256 by default


@pytest.mark.parametrize(
    "recipe, arrays",
    [("bundled_recipe.sh", ("TRAINING", "GENERATOR")), ("styles_recipe.sh", ("STYLES_TRAINING",))],
)
def test_the_bundled_models_recipes_are_flags_the_script_takes(recipe, arrays):
    """The recipes that scripts/train_bundled_model.sh sources, as bash expands them, parse: a flag renamed in the
    script cannot leave a recipe that only fails 20 minutes into a retraining."""
    expand = f"source scripts/{recipe}; printf '%s\\0' " + " ".join(f'"${{{name}[@]}}"' for name in arrays)
    argv = subprocess.run(["bash", "-c", expand], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    args = train_script.parse_args(["--train_data_dir", "pairs", "--output_dir", "out", *argv.split("\0")[:-1]])
    assert args.preset in ("bundled", "guided")
    if recipe == "styles_recipe.sh":
        assert args.styles == ["ghibli", "toon", "painterly"] and args.lambda_gradient_distribution > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resolution", "50"], "--resolution must be a multiple of 8"),
        (["--preset", "cartoongan_resnet", "--num_downs", "5"], "--num_downs: not an option of ResNetGenerator"),
        (["--preset", "bundled", "--generator", "unet"], "give --preset or its shorthand --generator"),
        (["--pretrained_model_name_or_path", "ckpt", "--ngf", "8"], "leave out --ngf"),
        (["--init_steps", "10"], "add --objective cartoongan"),
        (["--lambda_gradient_distribution", "-1"], "--lambda_gradient_distribution must be >= 0"),
        (["--lambda_mse", "-0.5"], "--lambda_mse must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_the_flag_and_what_to_do(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_help_explains_presets_and_checkpoints(capsys):
    with pytest.raises(SystemExit):
        train_script.parse_args(["--help"])
    out = capsys.readouterr().out
    for preset in ("unet_256", "unet_128", "attention_unet_512", "bundled", "cartoongan_resnet"):
        assert preset in out
    assert "checkpoint-N/generator" in out and "accelerate launch" in out


def test_cartoongan_without_vgg_weights_fails_at_start_naming_the_flag(tmp_path):
    args = parse("--objective", "cartoongan", "--vgg_weights", tmp_path / "missing.safetensors")
    with pytest.raises(RuntimeError, match=r"--vgg_weights .*missing\.safetensors"):
        train_script.build_objective(args, torch.device("cpu"))


# -- real runs under `accelerate launch` ------------------------------------------------------------------------------


def launch(args, processes=1, mixed_precision="no", timeout=300):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--dynamo_backend", "no"]
    command += ["--mixed_precision", mixed_precision, "--num_processes", str(processes)]
    command += ["--multi_gpu"] if processes > 1 else []
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [*command, str(ROOT / "train_accelerate.py"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A make-pairs dataset (parquet shards with embedded images) of 10 photos, some of them held out."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "photos").mkdir()
    for i in range(10):
        Image.fromarray(photo_like(96, 80, seed=i)).save(root / "photos" / f"p{i}.jpg", quality=95)
    argv = ["make-pairs", "--photos", str(root / "photos"), "--teacher", "toon", "--output_dir", str(root / "out")]
    assert ghibligan_main([*argv, "--validation_fraction", "0.2"]) == 0
    return root / "out"


@pytest.mark.slow
def test_two_cpu_processes_checkpoint_validate_and_resume(pairs, tmp_path):
    out = tmp_path / "run"
    common = ["--train_data_dir", pairs, "--output_dir", out, *TINY_UNET, "--norm", "instance", "--residual"]
    common += ["--tone_head_channels", "4", "--tone_head_init_steps", "20", "--checkpointing_steps", "2"]
    common += ["--checkpoints_total_limit", "2", "--validation_steps", "3"]
    launch([*common, "--max_train_steps", "4"], processes=2)

    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert {p.name for p in (out / "checkpoint-4").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"
    }  # fmt: skip
    for folder in (out / "checkpoint-4" / "generator", out):  # every checkpoint is a model, as is the final output
        cartoonizer = Cartoonizer.from_pretrained(folder, device="cpu")
        assert cartoonizer.generator.config["ngf"] == 8 and cartoonizer(photo_like(50, 30))[0].size == (50, 30)
    assert (out / "discriminator" / "config.json").is_file() and list((out / "logs").rglob("events.out.tfevents.*"))
    held_out = sum(pq.read_metadata(p).num_rows for p in (pairs / "data").glob("validation-*.parquet"))
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-0000003.png", "step-0000004.png"]
    assert Image.open(out / "validation" / "step-0000004.png").size == (3 * 64, held_out * 64)  # whole photos

    (out / "checkpoint-4" / "kept").touch()  # a run restarted from step 0 would save checkpoint-4 anew
    (out / "checkpoint-99.tmp").mkdir()  # an interrupted save: never "latest"
    launch([*common, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"], processes=2)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    assert (out / "checkpoint-4" / "kept").exists()
    last, final = (UNetGenerator.from_pretrained(p).state_dict() for p in (out / "checkpoint-6" / "generator", out))
    assert all(torch.equal(last[key], final[key]) for key in final)  # the final model is the last step's


@pytest.mark.slow
def test_cartoongan_in_bf16_on_an_imagefolder(tmp_path):
    root = tmp_path / "imagefolder"
    root.mkdir()
    with open(root / "metadata.jsonl", "w") as metadata:
        for i in range(6):
            photo = photo_like(72, 72, seed=20 + i)
            Image.fromarray(photo).save(root / f"photo{i}.png")
            Image.fromarray(255 - photo).save(root / f"cartoon{i}.png")
            row = {"input_image_file_name": f"photo{i}.png", "target_image_file_name": f"cartoon{i}.png"}
            metadata.write(json.dumps(row) + "\n")
    save_file(VGG19Features().state_dict(), tmp_path / "vgg19.safetensors")
    out = tmp_path / "run"
    launch(
        ["--train_data_dir", root, "--output_dir", out, "--objective", "cartoongan", "--generator", "resnet",
         "--n_blocks", "1", "--ngf", "8", "--ndf", "8", "--resolution", "64", "--train_batch_size", "2",
         "--vgg_weights", tmp_path / "vgg19.safetensors", "--init_steps", "2", "--max_train_steps", "4",
         "--checkpointing_steps", "4", "--validation_steps", "4", "--mixed_precision", "bf16", "--random_flip",
         "--report_to", "none"],
        mixed_precision="bf16",
    )  # fmt: skip
    assert json.loads((out / "checkpoint-4" / "generator" / "config.json").read_text())["_class_name"] == (
        "ResNetGenerator"
    )
    assert json.loads((out / "discriminator" / "config.json").read_text())["layout"] == "cartoongan"
    assert (out / "validation" / "step-0000004.png").is_file()
    assert all(torch.isfinite(p).all() for p in ResNetGenerator.from_pretrained(out).parameters())


def test_export_strengths_set_one_style_and_refuse_what_the_model_lacks(tmp_path):
    """evaluate_fidelity.py --posterize / --despeckle: each named style's strength is set, the others keep theirs,
    and a style or a stage the checkpoint does not have is one clear line."""
    spec = importlib.util.spec_from_file_location("evaluate_fidelity", ROOT / "scripts" / "evaluate_fidelity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    styles = ["ghibli", "toon"]
    GuidedFilterGenerator(styles=styles, channels=4, num_levels=2, num_blocks=1, levels=5, despeckle=1).save_pretrained(
        tmp_path / "full"
    )
    GuidedFilterGenerator(styles=styles, channels=4, num_levels=2, num_blocks=1).save_pretrained(tmp_path / "bare")
    generator = script.load_styles_generator(
        str(tmp_path / "full"), {"posterize": {"toon": 1.0}, "despeckle": {"toon": 1.0}}
    )
    both = torch.tensor([0, 1])
    torch.testing.assert_close(generator.despeckle.strength(both), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(
        generator.level_quantizer.parameters_for(both, torch.float32)[3].flatten()[1], torch.tensor(1.0)
    )
    with pytest.raises(SystemExit, match=r"--despeckle: .* has no style 'anime'"):
        script.load_styles_generator(str(tmp_path / "full"), {"despeckle": {"anime": 1.0}})
    with pytest.raises(SystemExit, match=r"--despeckle: .* has no median \(built without `despeckle`\)"):
        script.load_styles_generator(str(tmp_path / "bare"), {"despeckle": {"toon": 1.0}})
    assert script.strength_item("toon=1") == ("toon", 1.0)
    with pytest.raises(argparse.ArgumentTypeError):
        script.strength_item("toon=2")


def test_export_smoothing_noise_goes_into_the_config_and_keeps_the_weights(tmp_path):
    """evaluate_fidelity.py --smoothing_noise 8: a checkpoint trained without it is rebuilt with the gain in its
    config and on every style, the trained weights unchanged; 0 takes it out again."""
    spec = importlib.util.spec_from_file_location("evaluate_fidelity", ROOT / "scripts" / "evaluate_fidelity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    kwargs = {"channels": 4, "num_levels": 2, "num_blocks": 1, "photo_detail": True, "photo_smoothing": 1}
    model = GuidedFilterGenerator(styles=["ghibli", "toon"], **kwargs)
    with torch.no_grad():
        model.photo_smoother.log_eps.weight.normal_(-5, 0.5)
    model.save_pretrained(tmp_path / "ckpt")
    generator = script.load_styles_generator(str(tmp_path / "ckpt"), None, {"toon": 512}, 8.0)
    assert generator.config["smoothing_noise"] == 8.0 and generator.work_sides == {"toon": 512}
    torch.testing.assert_close(generator.photo_smoother.noise_gain.weight, torch.full((2, 1), 8.0))
    trained = model.state_dict()
    assert all(torch.equal(trained[key], value) for key, value in generator.state_dict().items() if key in trained)
    generator.save_pretrained(tmp_path / "export")
    reloaded = GuidedFilterGenerator.from_pretrained(tmp_path / "export")
    torch.testing.assert_close(reloaded.photo_smoother.noise_gain.weight, torch.full((2, 1), 8.0))
    removed = script.load_styles_generator(str(tmp_path / "export"), None, None, 0.0)
    assert removed.photo_smoother.noise_gain is None and removed.config["smoothing_noise"] == 0.0
    with torch.no_grad():  # gains a training run learned survive an export that changes something else
        reloaded.photo_smoother.noise_gain.weight.copy_(torch.tensor([[1.0], [9.0]]))
    reloaded.save_pretrained(tmp_path / "trained")
    kept = script.load_styles_generator(str(tmp_path / "trained"), None, {"ghibli": 512})
    torch.testing.assert_close(kept.photo_smoother.noise_gain.weight, torch.tensor([[1.0], [9.0]]))


def test_export_work_sides_go_into_the_config_and_keep_the_weights(tmp_path):
    """evaluate_fidelity.py --work_side ghibli=512: the generator is rebuilt with ``work_sides`` in its config (what
    the exported config.json and ONNX metadata carry), with the same weights; an unknown style is one clear line."""
    spec = importlib.util.spec_from_file_location("evaluate_fidelity", ROOT / "scripts" / "evaluate_fidelity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    model = GuidedFilterGenerator(styles=["ghibli", "toon"], channels=4, num_levels=2, num_blocks=1, levels=5)
    model.save_pretrained(tmp_path / "ckpt")
    generator = script.load_styles_generator(str(tmp_path / "ckpt"), {"posterize": {"toon": 1.0}}, {"ghibli": 512})
    assert generator.work_sides == {"ghibli": 512} and generator.config["work_sides"] == {"ghibli": 512}
    assert not generator.training
    expected = script.load_styles_generator(str(tmp_path / "ckpt"), {"posterize": {"toon": 1.0}}).state_dict()
    assert expected.keys() == generator.state_dict().keys()
    assert all(torch.equal(expected[key], value) for key, value in generator.state_dict().items())
    generator.save_pretrained(tmp_path / "export")
    assert GuidedFilterGenerator.from_pretrained(tmp_path / "export").work_sides == {"ghibli": 512}
    with pytest.raises(SystemExit, match=r"--work_side: .* has no style 'anime'"):
        script.load_styles_generator(str(tmp_path / "ckpt"), None, {"anime": 512})
    with pytest.raises(SystemExit, match=r"--smoothing_noise: .* has no photo smoothing"):
        script.load_styles_generator(str(tmp_path / "ckpt"), None, None, 8.0)
    assert script.side_item("toon=512") == ("toon", 512)
    for bad in ("toon", "toon=big", "=512", "toon=-1", "toon=10", "toon=20000"):
        with pytest.raises(argparse.ArgumentTypeError):
            script.side_item(bad)
