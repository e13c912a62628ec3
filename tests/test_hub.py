"""save_pretrained / from_pretrained / push_to_hub for every model, and strict, clear failures."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import load_file, save_file

from ghibligan import PatchDiscriminator, ResNetGenerator, UNetGenerator, load_generator

from .helpers import put_in_hub_cache

MODELS = {
    "unet": (UNetGenerator, {"ngf": 8, "attention_heads": 8, "innermost_kernel": 5}),
    "resnet": (ResNetGenerator, {"ngf": 8, "n_blocks": 2}),
    "patchgan": (PatchDiscriminator, {"ndf": 8}),
}


def forward(model, x):
    return model(x, x) if isinstance(model, PatchDiscriminator) else model(x)


def perturb_norm_stats(model):
    """Give BatchNorm running statistics non-default values, so a round trip that dropped them would show."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)


def read_card(path: Path) -> tuple[dict, str]:
    text = (path / "README.md").read_text()
    _, header, body = text.split("---", 2)
    return yaml.safe_load(header), body


@pytest.fixture(params=list(MODELS))
def saved(request, tmp_path):
    cls, kwargs = MODELS[request.param]
    model = cls(**kwargs)
    perturb_norm_stats(model)
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    return cls, kwargs, model, tmp_path / "ckpt"


def test_save_writes_config_weights_and_card(saved):
    cls, kwargs, model, path = saved
    assert sorted(os.listdir(path)) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config == {"_class_name": cls.__name__, **model.config}
    assert {k: config[k] for k in kwargs} == kwargs
    assert set(load_file(path / "model.safetensors")) == set(model.state_dict())
    metadata, _ = read_card(path)  # the Hub indexes the model by these
    assert metadata["library_name"] == "ghibligan"
    assert metadata["pipeline_tag"] == "image-to-image"
    assert metadata["license"] == "apache-2.0"
    assert "ghibligan" in metadata["tags"] and "pytorch_model_hub_mixin" in metadata["tags"]


def test_from_pretrained_gives_identical_outputs(saved):
    cls, _, model, path = saved
    loaded = cls.from_pretrained(path)
    assert not loaded.training
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(forward(model, x), forward(loaded, x))
    assert loaded.config == model.config
    assert set(loaded.config) == set(cls.config_keys())  # every __init__ kwarg, nothing private


def test_config_is_a_copy_that_rebuilds_the_model():
    model = UNetGenerator(num_downs=5, ngf=8, tone_head_channels=4)
    config = model.config
    config["ngf"] = 64
    assert model.config["ngf"] == 8  # the caller's copy, not the model's
    rebuilt = UNetGenerator(**model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_card_snippet_runs(tmp_path, name):
    """The snippet in the card is real code: run it against the folder it describes."""
    cls, kwargs = MODELS[name]
    cls(**kwargs).save_pretrained(tmp_path / "ckpt")
    _, body = read_card(tmp_path / "ckpt")
    snippet = body.split("```python\n", 1)[1].split("```", 1)[0].replace("path/to/this/folder", str(tmp_path / "ckpt"))
    namespace = {}
    exec(snippet, namespace)
    assert type(namespace["model"]) is cls
    assert namespace["model"].config == cls(**kwargs).config


def test_load_generator_picks_the_class_from_config(tmp_path):
    UNetGenerator(ngf=8).save_pretrained(tmp_path / "unet")
    ResNetGenerator(ngf=8, n_blocks=1).save_pretrained(tmp_path / "resnet")
    assert type(load_generator(tmp_path / "unet")) is UNetGenerator
    assert type(load_generator(tmp_path / "resnet")) is ResNetGenerator
    PatchDiscriminator(ndf=8).save_pretrained(tmp_path / "disc")
    with pytest.raises(ValueError, match="not a ghibligan generator"):
        load_generator(tmp_path / "disc")


def test_fp16_weights_load_into_fp32_model(tmp_path):
    model = UNetGenerator(ngf=8).eval()
    model.half().save_pretrained(tmp_path / "fp16")
    assert load_file(tmp_path / "fp16" / "model.safetensors")["conv_in.weight"].dtype == torch.float16
    loaded = UNetGenerator.from_pretrained(tmp_path / "fp16")
    assert loaded.conv_in.weight.dtype == torch.float32
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(loaded(x), model.float()(x), atol=2e-3, rtol=0)


# -- failures are loud and say what is wrong -------------------------------------------------------------------------


def test_truncated_weights_file_is_reported(saved):
    cls, _, _, path = saved
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors.*corrupted or not a safetensors file"):
        cls.from_pretrained(path)


def test_missing_tensor_is_named(tmp_path):
    UNetGenerator(ngf=8).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["down_blocks.2.conv.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"(?s)do not match UNetGenerator.*Missing key.*down_blocks\.2\.conv\.weight"):
        UNetGenerator.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_name(tmp_path, value):
    """A damaged or hostile checkpoint with NaN / inf weights fails at load, not as a black image later."""
    UNetGenerator(ngf=8).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["down_blocks.1.conv.weight"][0, 0, 0, 0] = value
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"NaN or infinite values in 'down_blocks\.1\.conv\.weight'"):
        UNetGenerator.from_pretrained(tmp_path)


def test_mismatched_config_and_weights_are_named(tmp_path):
    UNetGenerator(ngf=8).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "ngf": 16}))
    with pytest.raises(ValueError, match=r"(?s)do not match UNetGenerator.*size mismatch for conv_in\.weight"):
        UNetGenerator.from_pretrained(tmp_path)


def test_invalid_config_value_fails_with_its_name(tmp_path):
    UNetGenerator(ngf=8).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "norm": "group"}))
    with pytest.raises(ValueError, match=r"`norm` must be one of .* got 'group'"):
        UNetGenerator.from_pretrained(tmp_path)


def test_checkpoint_of_another_class_is_refused(tmp_path):
    ResNetGenerator(ngf=8, n_blocks=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a ResNetGenerator checkpoint, not a UNetGenerator"):
        UNetGenerator.from_pretrained(tmp_path)


def test_unknown_config_key_is_refused(tmp_path):
    UNetGenerator(ngf=8).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_blocks": 8}))
    with pytest.raises(ValueError, match=r"keys \['n_blocks'\] that UNetGenerator does not take"):
        UNetGenerator.from_pretrained(tmp_path)


def test_config_of_removed_full_res_channels_loads_when_off_and_is_refused_when_on(tmp_path):
    """Checkpoints from before `full_res_channels` was removed hold it (the bundled one holds 0)."""
    model = UNetGenerator(num_downs=5, ngf=8).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "full_res_channels": 0}))
    loaded = UNetGenerator.from_pretrained(tmp_path)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded(x), model(x))
    assert "full_res_channels" not in loaded.config  # and it is gone from the config it saves
    (tmp_path / "config.json").write_text(json.dumps({**config, "full_res_channels": 8}))
    with pytest.raises(ValueError, match=r"sets full_res_channels=8, an option UNetGenerator no longer has.*Retrain"):
        UNetGenerator.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"sets full_res_channels=8"):
        load_generator(tmp_path)


def test_folder_without_config_is_refused(tmp_path):
    UNetGenerator(ngf=8).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"No config\.json"):
        UNetGenerator.from_pretrained(tmp_path)


# -- the Hub code path, offline ---------------------------------------------------------------------------------------


def test_from_pretrained_by_repo_id_goes_through_hf_hub_download(tmp_path):
    assert constants.HF_HUB_OFFLINE
    model = ResNetGenerator(ngf=8, n_blocks=1).eval()
    model.save_pretrained(tmp_path / "ckpt")
    put_in_hub_cache(tmp_path / "ckpt", "ghibligan-test/resnet-tiny")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(ResNetGenerator.from_pretrained("ghibligan-test/resnet-tiny")(x), model(x))
    assert torch.equal(load_generator("ghibligan-test/resnet-tiny")(x), model(x))


def test_unknown_repo_id_offline_fails_clearly():
    with pytest.raises(LocalEntryNotFoundError, match=r"cannot find the requested files in the local cache"):
        UNetGenerator.from_pretrained("ghibligan-test/does-not-exist")


def test_push_to_hub_uploads_a_complete_checkpoint(tmp_path, monkeypatch):
    """push_to_hub runs the real save/card code; only the two network calls are replaced by recorders."""
    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub.hf_api import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return "https://huggingface.co/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    UNetGenerator(ngf=8).push_to_hub("someone/tiny-unet")
    assert uploaded["repo_id"] == "someone/tiny-unet"
    assert sorted(uploaded["files"]) == ["README.md", "config.json", "model.safetensors"]
    card = uploaded["files"]["README.md"].decode()
    assert 'UNetGenerator.from_pretrained("someone/tiny-unet")' in card  # the snippets load what was pushed
    assert 'Cartoonizer.from_pretrained("someone/tiny-unet")' in card
    assert json.loads(uploaded["files"]["config.json"])["_class_name"] == "UNetGenerator"
