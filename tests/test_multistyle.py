"""Multi-style data and training: multi-teacher make-pairs, one target column per style drawn per sample, the style
reaching the generator, the gradient loss, the per-style tone-head warm start, and the --target_column flags."""

import importlib.util
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from PIL import Image

from ghibligan import GuidedFilterGenerator
from ghibligan.cli import main as ghibligan_main
from ghibligan.data import PairedImageDataset, PairTransform, collate_pairs
from ghibligan.losses import Pix2PixObjective, gradient_loss
from ghibligan.models.guided import LevelQuantizer, StyleColorMap, estimate_levels
from ghibligan.models.patchgan import PatchDiscriminator
from ghibligan.teachers import ToonTeacher
from ghibligan.training import (
    StyleSelected,
    fit_detail_weights,
    fit_level_quantizer,
    fit_tone_head,
    training_step,
    validate,
)

from .helpers import photo_like

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_accelerate", ROOT / "train_accelerate.py")
train_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_script)

STYLE_COLOURS = {"ghibli": (200, 40, 40), "toon": (40, 200, 40), "painterly": (40, 40, 200)}


def styled_rows(count: int = 12, size: int = 48) -> datasets.Dataset:
    """Photos and three target columns, each a flat colour of its own: a target says which column it came from."""
    photos = [Image.fromarray(photo_like(size, size, seed=i)) for i in range(count)]
    columns = {"input_image": photos}
    for name, colour in STYLE_COLOURS.items():
        columns[name] = [Image.new("RGB", (size, size), colour)] * count
    features = datasets.Features({name: datasets.Image() for name in columns})
    return datasets.Dataset.from_dict(columns, features=features)


def test_make_pairs_with_several_teachers_writes_one_target_column_per_style(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(photo_like(64, 48, seed=i)).save(photos / f"p{i}.jpg", quality=95)
    code = ghibligan_main(["make-pairs", "--photos", str(photos), "--teacher", "toon:toon", "toon:painterly",
                           "--output_dir", str(tmp_path / "pairs")])  # fmt: skip
    assert code == 0
    (shard,) = sorted((tmp_path / "pairs" / "data").glob("train-*.parquet"))
    table = pq.read_table(shard)
    assert table.column_names == ["input_image", "toon", "painterly", "teacher", "prompt", "seed", "source"]
    rows = datasets.Dataset.from_parquet(str(shard)).cast_column("input_image", datasets.Image())
    for row in rows.cast_column("toon", datasets.Image()).cast_column("painterly", datasets.Image()):
        assert row["teacher"] == "toon:toon,toon:painterly"
        for column in ("toon", "painterly"):
            expected = ToonTeacher(column)(row["input_image"])
            assert np.array_equal(np.asarray(row[column]), np.asarray(expected))
    card = (tmp_path / "pairs" / "README.md").read_text()
    assert "`toon:painterly` (`painterly`)" in card
    # a re-run with other teachers would mix schemas: refused, naming the columns
    code = ghibligan_main(["make-pairs", "--photos", str(photos), "--teacher", "toon:toon",
                           "--output_dir", str(tmp_path / "pairs")])  # fmt: skip
    assert code != 0 and "holds pairs with the columns" in capsys.readouterr().err


def test_each_sample_draws_a_style_and_gets_that_columns_target():
    rows = styled_rows()
    pairs = PairedImageDataset(
        rows, "input_image", list(STYLE_COLOURS), transform=PairTransform(32, random_flip=True), seed=3
    )
    colours = list(STYLE_COLOURS.values())
    drawn = []
    for epoch in (0, 1):
        pairs.set_epoch(epoch)
        for index in range(len(pairs)):
            item = pairs[index]
            style = int(item["style"])
            assert item["style"].dtype == torch.long
            expected = torch.tensor(colours[style], dtype=torch.float32) / 127.5 - 1
            assert torch.allclose(item["target"], expected[:, None, None].expand_as(item["target"]), atol=1e-6)
            drawn.append(style)
    assert set(drawn) == {0, 1, 2}  # every style is drawn
    assert drawn[: len(pairs)] != drawn[len(pairs) :]  # and the draw changes with the epoch
    pairs.set_epoch(1)
    assert [int(pairs[i]["style"]) for i in range(len(pairs))] == drawn[
        len(pairs) :
    ]  # a function of (seed, epoch, row)
    batch = collate_pairs([pairs[0], pairs[1], pairs[2]])
    assert batch["style"].shape == (3,) and batch["style"].dtype == torch.long
    # whole validation images per style; one target column keeps the one-style samples (no style)
    ((_, target),) = pairs.whole_pairs(1, style=2)
    assert np.asarray(target)[0, 0].tolist() == list(colours[2])
    assert "style" not in PairedImageDataset(rows, "input_image", "toon", transform=PairTransform(32))[0]


def prepared_step_parts(discriminator: PatchDiscriminator):
    """A tiny 3-style generator, ``discriminator``, their Adam optimizers and constant schedulers, prepared by a CPU
    `Accelerator`, and a 2-photo batch of styles 0 and 2: ``(accelerator, generator, discriminator, optimizers,
    schedulers, batch)``."""
    accelerator = Accelerator(cpu=True)
    generator = GuidedFilterGenerator(styles=list(STYLE_COLOURS), channels=4, num_levels=2, num_blocks=1)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (generator, discriminator)]
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0) for o in optimizers]
    generator, discriminator, *rest = accelerator.prepare(generator, discriminator, *optimizers, *schedulers)
    photos = torch.stack([torch.from_numpy(photo_like(32, 32, seed=i)).permute(2, 0, 1) for i in range(2)])
    photos = photos.float() / 127.5 - 1
    batch = {"input": photos, "target": -photos, "style": torch.tensor([0, 2])}
    return accelerator, generator, discriminator, tuple(rest[:2]), tuple(rest[2:]), batch


def test_a_multi_style_training_step_moves_weights_and_uses_each_samples_style():
    accelerator, generator, discriminator, optimizers, schedulers, batch = prepared_step_parts(
        PatchDiscriminator(ndf=8, n_layers=2)
    )
    with torch.no_grad():
        generator.conv_out.weight.normal_(std=0.1)  # a trained-looking net: FiLM reaches the output
    before = {name: p.detach().clone() for name, p in generator.named_parameters()}
    objective = Pix2PixObjective(lambda_l1=1, lambda_gradient=1, lambda_adversarial=0)
    d_before = [p.detach().clone() for p in discriminator.parameters()]
    logs = training_step(accelerator, objective, generator, discriminator, optimizers, schedulers, batch, 0)
    assert set(logs) == {"loss_g_l1", "loss_g_gradient"}  # no GAN term, no D step
    assert all(torch.equal(p, b) for p, b in zip(discriminator.parameters(), d_before, strict=True))
    film = generator.style_film.weight.detach()
    # the styles of the batch (0 and 2) were trained, style 1 (in no sample) was not
    assert not torch.equal(film[0], before["style_film.weight"][0])
    assert not torch.equal(film[2], before["style_film.weight"][2])
    assert torch.equal(film[1], before["style_film.weight"][1])
    assert not torch.equal(generator.conv_in.weight, before["conv_in.weight"])


def test_gradient_loss_penalizes_texture_the_target_does_not_have():
    flat = torch.zeros(1, 3, 16, 16)
    textured = flat + 0.1 * torch.randn(1, 3, 16, 16)
    assert gradient_loss(flat + 0.5, flat) == 0  # a colour shift has the target's gradients
    assert gradient_loss(textured, flat) > 0.05
    objective = Pix2PixObjective(lambda_l1=1, lambda_gradient=10, lambda_adversarial=0)
    loss, logs = objective.generator_loss(None, {"input": flat, "target": flat}, textured, adversarial=False)
    assert torch.isclose(loss, logs["loss_g_l1"] + 10 * logs["loss_g_gradient"])
    assert not objective.is_adversarial(0) and "without GAN" in objective.description
    with pytest.raises(ValueError, match="lambda_gradient"):
        Pix2PixObjective(lambda_gradient=-1)


def test_the_tone_head_warm_start_fits_each_style_its_own_colour_map():
    head = StyleColorMap(3, 16, num_styles=2)
    photos = [torch.rand(3, 8, 8) * 2 - 1 for _ in range(8)]
    samples = [
        {"input": photo, "target": photo if i % 2 == 0 else -photo, "style": torch.tensor(i % 2)}
        for i, photo in enumerate(photos)
    ]
    probe = torch.tensor([0.6, -0.2, 0.3])[None, :, None, None]
    fit_tone_head(head, samples, steps=40, seed=0)
    with torch.no_grad():
        as_style = [head(probe, torch.tensor([style])) for style in (0, 1)]
    # each style moved toward its own map: style 0 stays near the photo's colour, style 1 goes toward its inverse
    assert (as_style[0] - probe).abs().mean() < (as_style[1] - probe).abs().mean()
    assert (as_style[1] + probe).abs().mean() < (as_style[0] + probe).abs().mean()


def test_validation_draws_the_style_it_is_asked_for():
    generator = GuidedFilterGenerator(styles=["a", "b"], channels=4, num_levels=2, num_blocks=1).eval()
    with torch.no_grad():
        generator.tone_head.conv_out.weight.fill_(0.1)
        generator.tone_head.style_bias.weight[1] = 3.0  # style b: a strong tint
    photo = Image.fromarray(photo_like(40, 32))
    _, metrics_a = validate(generator, [(photo, photo)], style="a")
    _, metrics_b = validate(generator, [(photo, photo)], style="b")
    assert metrics_a["val/l1"] < metrics_b["val/l1"]
    with pytest.raises(ValueError, match="Unknown style 'c'"):
        StyleSelected(generator, "c")


def test_target_column_flags_name_styles_and_refuse_what_cannot_train(capsys):
    base = ["--train_data_dir", "pairs", "--output_dir", "out", "--preset", "guided"]
    args = train_script.parse_args([*base, "--target_column", "ghibli=Ghibli", "toon", "--lambda_adversarial", "0"])
    assert (args.styles, args.target_columns, args.target_column) == (
        ["ghibli", "toon"],
        ["Ghibli", "toon"],
        ["Ghibli", "toon"],
    )
    assert train_script.generator_styles(args) == ["ghibli", "toon"]
    single = train_script.parse_args(base)
    assert single.target_column == "target_image" and train_script.generator_styles(single) is None
    with_gan = train_script.parse_args([*base, "--target_column", "a", "b", "c"])  # D is style-aware: allowed
    assert train_script.style_planes(with_gan) == 3 and train_script.style_planes(single) == 0
    assert train_script.build_objective(with_gan, torch.device("cpu")).num_styles == 3
    for argv, message in [
        ([*base, "--target_column", "a", "a", "--lambda_adversarial", "0"], "given twice"),
        (["--train_data_dir", "p", "--output_dir", "o", "--target_column", "a", "b", "--lambda_adversarial", "0"],
         "style-conditioned generator"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit):
            train_script.parse_args(argv)
        assert message in capsys.readouterr().err


def test_guided_model_flags_set_the_generators_config(capsys):
    """--channels, --num_levels, --num_blocks, --tone_channels, --flatten_radius, --flatten_dilations, --levels (with
    the older --scale_factor ...) override the guided preset; they are refused for a generator that does not have
    them."""
    base = ["--train_data_dir", "pairs", "--output_dir", "out", "--target_column", "a", "b"]
    flags = {"channels": 4, "num_levels": 2, "num_blocks": 1, "tone_channels": 6, "flatten_radius": 1, "levels": 5}
    flags |= {"photo_smoothing": 2, "smoothing_eps": 0.04}
    argv = [*base, "--preset", "guided", "--flatten_iterations", "1", "--flatten_dilations", "2", "5"]
    argv += [item for name, value in flags.items() for item in (f"--{name}", str(value))]
    generator, _ = train_script.build_models(train_script.parse_args(argv), Accelerator(cpu=True))
    assert isinstance(generator, GuidedFilterGenerator) and generator.styles == ["a", "b"]
    assert {name: generator.config[name] for name in flags} == flags
    assert generator.tone_head.conv_out.in_channels == 6 and generator.flattener.radius == 1
    assert generator.config["flatten_dilations"] == [2, 5] and generator.flattener.dilations == (2, 5)
    assert generator.photo_smoother.radius == 2
    assert generator.photo_smoother.eps(torch.tensor([1])).flatten().tolist() == pytest.approx([0.04] * 3)
    assert generator.level_quantizer.log_step.weight.exp().flatten().tolist() == pytest.approx([2 / 5, 2 / 5])
    assert len(generator.down_blocks) == 2 and len(generator.mid_blocks) == 1 and generator.conv_in.out_channels == 4
    with pytest.raises(SystemExit):
        train_script.parse_args(["--train_data_dir", "p", "--output_dir", "o", "--preset", "unet_256", "--channels=4"])
    assert "--channels: not an option of UNetGenerator" in capsys.readouterr().err


def test_a_style_aware_discriminator_sees_each_samples_style():
    """With a GAN, D's condition is the photo plus one-hot style planes: the same (photo, image) pair scores
    differently under another style, D trains, and G gets the adversarial term."""
    accelerator, generator, discriminator, optimizers, schedulers, batch = prepared_step_parts(
        PatchDiscriminator(ndf=8, n_layers=2, condition_channels=3 + len(STYLE_COLOURS))
    )
    objective = Pix2PixObjective(lambda_l1=1, lambda_adversarial=0.1, num_styles=len(STYLE_COLOURS))
    condition = objective.condition(batch)
    assert condition.shape == (2, 6, 32, 32)
    assert torch.equal(condition[:, 3:, 0, 0], torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    d_before = [p.detach().clone() for p in discriminator.parameters()]
    logs = training_step(accelerator, objective, generator, discriminator, optimizers, schedulers, batch, 0)
    assert {"loss_d", "loss_g_gan", "loss_g_l1"} <= set(logs)
    assert not all(torch.equal(p, b) for p, b in zip(discriminator.parameters(), d_before, strict=True))
    with torch.no_grad():
        as_given = discriminator(batch["target"], condition)
        other = objective.condition({**batch, "style": torch.tensor([1, 1])})
        assert not torch.allclose(discriminator(batch["target"], other), as_given)


def posterized(levels: int, offset: float, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A grey (3, size, size) image in [-1, 1] with smooth content cut into ``levels`` luma levels centred on
    ``offset + step · (k + 0.5)``, plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(1, 1, 8, 8, generator=generator) * 2 - 1, size=size, mode="bicubic")[0, 0]
    step = 2 / levels
    values = offset + step * (torch.floor((smooth - offset) / step) + 0.5)
    return (values + 0.005 * torch.randn(size, size, generator=generator)).clamp(-1, 1).expand(3, -1, -1)


@pytest.mark.parametrize("levels, offset", [(5, 0.14), (7, 0.05), (3, 0.3)])
def test_estimate_levels_finds_the_step_and_centres_of_posterized_luma(levels, offset):
    step, found_offset, concentration = estimate_levels(posterized(levels, offset)[0])
    assert step == pytest.approx(2 / levels, rel=0.03)
    assert (found_offset - offset + step / 2) % step == pytest.approx(step / 2, abs=0.02)  # the same centres
    assert concentration > 0.9
    smooth = torch.linspace(-1, 1, 4096)  # continuous tones: no level stands out
    assert estimate_levels(smooth)[2] < 0.2


def test_fit_level_quantizer_starts_posterized_styles_posterized_and_others_off():
    quantizer = LevelQuantizer(num_styles=2, levels=6)
    continuous = F.interpolate(torch.rand(1, 3, 8, 8) * 2 - 1, size=64, mode="bicubic")[0].clamp(-1, 1)
    samples = [{"target": posterized(5, 0.14, seed=i), "style": torch.tensor(0)} for i in range(3)]
    samples += [{"target": continuous, "style": torch.tensor(1)}]
    fitted = fit_level_quantizer(quantizer, samples)
    assert fitted[0][0] == pytest.approx(5, rel=0.03) and fitted[0][1] > 0.9 and fitted[1][1] < 0.3
    *_, strength = quantizer.parameters_for(torch.tensor([0, 1]), torch.float32)
    assert strength.flatten().tolist() == [1.0, 0.0]
    with torch.no_grad():  # style 0 keeps the levels where they are (half a step off, it would move them all)
        image = posterized(5, 0.14)[None]
        assert (quantizer(image, torch.tensor([0])) - image).abs().mean() < 0.01


def test_fit_detail_weights_start_each_style_at_its_targets_share_of_the_photo_structure():
    """A style whose targets keep the photo's fine structure (here: the smoothed photo itself) starts at 1, one whose
    targets have none (flat colours) at 0, one in between (their mix) in between; an unseen style keeps its start."""
    model = GuidedFilterGenerator(
        styles=["kept", "flat", "half", "unseen"], upsampler="joint_bilateral", photo_detail=True, photo_smoothing=1
    )
    samples = []
    for seed in range(3):
        photo = torch.from_numpy(photo_like(64, 48, seed=seed)).permute(2, 0, 1).float() / 127.5 - 1
        low = F.interpolate(photo[None], size=(24, 32), mode="area")
        with torch.no_grad():
            kept = model.photo_smoother(low, photo[None], torch.tensor([0]))[0]
        flat = torch.rand(3, 1, 1).expand(3, 48, 64) * 2 - 1
        for style, target in enumerate((kept, flat, (kept + flat) / 2)):
            samples.append({"input": photo, "target": target, "style": torch.tensor(style)})
    fitted = fit_detail_weights(model, samples)
    assert fitted[0] == pytest.approx(1.0, abs=0.02) and fitted[1] == pytest.approx(0.0, abs=0.02)
    assert fitted[2] == pytest.approx(0.5, abs=0.05) and 3 not in fitted
    assert model.style_detail.weight.flatten().tolist() == pytest.approx([*fitted.values(), 1.0])


def test_fit_level_quantizer_estimates_lab_levels_in_the_lab_space():
    """A teacher that quantizes L* (as the toon teachers do) has clear levels in L*, blurred ones in luma."""
    from ghibligan.models.color import lab_to_rgb

    generator = torch.Generator().manual_seed(0)
    level = torch.randint(5, (1, 1, 16, 16), generator=generator).float()
    lightness = F.interpolate((level + 0.5) * 20, size=64, mode="nearest")
    chroma = F.interpolate(torch.rand(1, 2, 16, 16, generator=generator) * 60 - 30, size=64, mode="nearest")
    samples = [{"target": lab_to_rgb(torch.cat([lightness, chroma], dim=1))[0], "style": torch.tensor(0)}]
    lab_fit = fit_level_quantizer(LevelQuantizer(num_styles=1, levels=6, space="lab"), samples)
    luma_fit = fit_level_quantizer(LevelQuantizer(num_styles=1, levels=6), samples)
    assert lab_fit[0][0] == pytest.approx(5, rel=0.03) and lab_fit[0][1] > 0.95
    assert luma_fit[0][1] < lab_fit[0][1] - 0.2
