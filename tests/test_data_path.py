"""The fast training data path (issue #15): the decode-once cache and the batched crop on the device give exactly the
per-sample path's tensors for the same (seed, epoch, row), with unreadable rows, several styles, the side-by-side
layout and edge smoothing; the cache is keyed on the data; persistent DataLoader workers follow set_epoch."""

import logging
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ghibligan.augment import crop_pairs
from ghibligan.data import (
    PairedImageDataset,
    PairTransform,
    UnreadableBudget,
    UnreadableDataError,
    build_pair_datasets,
    collate_pairs,
    dataset_brightness,
    load_pairs_dataset,
)
from ghibligan.data_cache import DecodedPairs, collate_decoded_pairs

from .helpers import photo_like
from .test_data import corrupt_rows, image_dataset, write_pairs
from .test_training import train_script
from .test_training_faults import equal_weights, launch, succeeded, write_split


def varied_rows(count: int = 6, broken=()) -> datasets.Dataset:
    """Pairs of several sizes and aspect ratios (so batches pad), targets of another size than their photo."""
    sizes = [(90, 70), (70, 90), (64, 48), (120, 60), (50, 50), (100, 80)]
    photos = [photo_like(*sizes[i % len(sizes)], seed=i) for i in range(count)]
    targets = [np.asarray(Image.fromarray(255 - p).resize((p.shape[1] // 2, p.shape[0] // 2))) for p in photos]
    rows = image_dataset({"input_image": photos, "target_image": targets})
    if broken:  # truncate the inputs of the rows `broken`, named broken_{i}.png
        cells = rows.cast_column("input_image", datasets.Image(decode=False))["input_image"]
        cells = [
            {"bytes": c["bytes"][:60], "path": f"broken_{i}.png"} if i in broken else c for i, c in enumerate(cells)
        ]
        rows = rows.cast_column("input_image", datasets.Image(decode=False))
        rows = rows.remove_columns("input_image").add_column("input_image", cells)
        rows = rows.cast_column("input_image", datasets.Image())
    return rows


def both_paths(pairs: PairedImageDataset, cache_dir, epochs=(0, 1, 2), batch_size=3, channels_last=False):
    """(per-sample CPU batches, decoded-cache batches cropped by `crop_pairs`) over ``epochs``, in row order."""
    cached = DecodedPairs(pairs, cache_dir=cache_dir)
    expected, got = [], []
    for epoch in epochs:
        cached.set_epoch(epoch)
        for start in range(0, len(pairs), batch_size):
            indices = range(start, min(start + batch_size, len(pairs)))
            expected.append(collate_pairs([pairs[i] for i in indices]))
            got.append(crop_pairs(collate_decoded_pairs([cached[i] for i in indices]), 32, channels_last))
    return expected, got


def assert_same_batches(expected: list[dict], got: list[dict]) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), key  # value for value, not close


@pytest.mark.parametrize("transform", [dict(random_flip=True), dict(center_crop=True, random_flip=True), dict()])
def test_the_cache_and_the_device_crop_equal_the_per_sample_path(tmp_path, transform):
    pairs = PairedImageDataset(varied_rows(), "input_image", "target_image", PairTransform(32, **transform), seed=7)
    expected, got = both_paths(pairs, tmp_path)
    assert_same_batches(expected, got)
    assert len({batch["input"].sum().item() for batch in got}) > 3  # the crops do change with the epoch


def test_a_held_out_and_truncated_training_set_is_cached_row_for_row(tmp_path):
    """train_test_split and select leave an indices mapping over the rows: the cache must follow it."""
    folder = write_pairs(tmp_path / "pairs", {"train": 12})
    pairs, _ = build_pair_datasets(
        train_data_dir=folder, validation_split="0.25", max_train_samples=7, resolution=32, random_flip=True, seed=3
    )
    assert len(pairs) == 7
    assert_same_batches(*both_paths(pairs, tmp_path / "cache"))


def test_channels_last_crops_hold_the_same_values_in_the_channels_last_layout(tmp_path):
    pairs = PairedImageDataset(varied_rows(), "input_image", "target_image", PairTransform(32, random_flip=True))
    expected, got = both_paths(pairs, tmp_path, epochs=(1,), channels_last=True)
    assert_same_batches(expected, got)
    assert got[0]["input"].is_contiguous(memory_format=torch.channels_last)


def test_unreadable_rows_are_replaced_by_the_same_rows_with_a_warning_and_a_budget(tmp_path, caplog):
    rows = varied_rows(6, broken={1, 4})
    budget = UnreadableBudget(max_fraction=0.5)  # 2 rows of 6
    pairs = PairedImageDataset(
        rows, "input_image", "target_image", PairTransform(32, random_flip=True), seed=5, budget=budget
    )
    with caplog.at_level(logging.WARNING):
        expected, got = both_paths(pairs, tmp_path)
    assert_same_batches(expected, got)  # full batches, the same replacement rows and crops
    assert "broken_1.png" in caplog.text and "broken_4.png" in caplog.text
    assert budget.failures == 2 * 6  # rows 1 and 4, in 3 epochs, by each path: the cache's reads count too
    dead = PairedImageDataset(corrupt_rows(4, {0, 1, 2, 3}), "input_image", "target_image", PairTransform(32))
    with pytest.raises(UnreadableDataError, match=r"16 rows in a row could not be decoded, e\.g\. row \d: broken_"):
        DecodedPairs(dead, cache_dir=tmp_path)[0]


def test_several_styles_side_by_side_and_edge_smoothing_equal_the_per_sample_path(tmp_path):
    photos = [photo_like(60, 44, seed=i) for i in range(5)]
    styled = image_dataset({"photo": photos, "a": [255 - p for p in photos], "b": [p // 2 for p in photos]})
    pairs = PairedImageDataset(styled, "photo", ["a", "b"], PairTransform(32, random_flip=True), seed=2)
    expected, got = both_paths(pairs, tmp_path / "styles")
    assert_same_batches(expected, got)
    assert {int(s) for batch in got for s in batch["style"]} == {0, 1}

    joined = image_dataset({"image": [np.concatenate([p, 255 - p], axis=1) for p in photos]})
    for direction in ("AtoB", "BtoA"):
        pairs = PairedImageDataset(
            joined, "image", "", PairTransform(32, random_flip=True), paired_layout="side_by_side", direction=direction
        )
        assert_same_batches(*both_paths(pairs, tmp_path / direction))

    pairs = PairedImageDataset(
        varied_rows(), "input_image", "target_image", PairTransform(32, random_flip=True), edge_smoothing=True
    )
    expected, got = both_paths(pairs, tmp_path / "smoothed")
    assert_same_batches(expected, got)
    assert any(not torch.equal(b["target"], b["target_smoothed"]) for b in got)


def test_the_cache_stores_brightness_and_is_made_once_then_reused(tmp_path):
    pairs = PairedImageDataset(varied_rows(), "input_image", "target_image", PairTransform(32))
    first = DecodedPairs(pairs, cache_dir=tmp_path)
    assert first.brightness() == dataset_brightness(pairs)  # exactly: the balanced sampler's bins stay the same
    assert first.cache_file.is_file() and first.cache_file.parent == tmp_path
    again = DecodedPairs(PairedImageDataset(varied_rows(), "input_image", "target_image", PairTransform(32)), tmp_path)
    assert again.cache_file == first.cache_file  # found by its key, not decoded anew
    other_size = DecodedPairs(
        PairedImageDataset(varied_rows(), "input_image", "target_image", PairTransform(40)), tmp_path
    )
    assert other_size.cache_file != first.cache_file
    in_two = DecodedPairs(
        PairedImageDataset(varied_rows(), "input_image", "target_image", PairTransform(32)), tmp_path / "2", 2
    )
    assert in_two.table[:] == first.table[:]  # decoded in two processes: the same rows


def test_a_changed_dataset_gets_a_new_cache_even_under_the_same_file_names(tmp_path):
    folder = tmp_path / "folders"
    for column in ("input_image", "target_image"):
        (folder / column).mkdir(parents=True)

    def write(seed):
        for name in ("a", "b"):
            for column in ("input_image", "target_image"):
                Image.fromarray(photo_like(48, 40, seed=seed)).save(folder / column / f"{name}.png")

    def decoded() -> DecodedPairs:
        rows = load_pairs_dataset(train_data_dir=str(folder))["train"]
        return DecodedPairs(PairedImageDataset(rows, "input_image", "target_image", PairTransform(32)), tmp_path)

    write(seed=0)
    before = decoded()
    first_pixels = before.load(0)["input"].clone()
    write(seed=1)  # same names, new pixels
    later = os.stat(folder / "input_image" / "a.png").st_mtime_ns + 10**9
    os.utime(folder / "input_image" / "a.png", ns=(later, later))  # a coarse-mtime filesystem still sees a change
    after = decoded()
    assert after.cache_file != before.cache_file
    assert not torch.equal(after.load(0)["input"], first_pixels)  # not served stale


def test_persistent_workers_follow_set_epoch_like_the_main_process(tmp_path):
    pairs = PairedImageDataset(varied_rows(), "input_image", "target_image", PairTransform(32, random_flip=True))
    cached = DecodedPairs(pairs, cache_dir=tmp_path)

    def epochs(num_workers: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            cached, batch_size=3, num_workers=num_workers, persistent_workers=num_workers > 0,
            collate_fn=collate_decoded_pairs,
        )  # fmt: skip
        crops = []
        for epoch in range(3):
            cached.set_epoch(epoch)
            crops += [batch["crop"] for batch in loader]
        return crops

    in_process, in_workers = epochs(0), epochs(2)
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True))
    assert not torch.equal(in_process[0], in_process[2])  # the windows differ between epochs


# -- the training script ---------------------------------------------------------------------------------------------


def test_the_script_caches_map_style_data_by_default_and_streams_without_the_cache(tmp_path):
    def parse(extra=()):
        return train_script.parse_args(["--train_data_dir", "pairs", "--output_dir", str(tmp_path), *extra])

    assert parse().decode_cache and not parse(["--no-decode_cache"]).decode_cache
    streamed = train_script.parse_args(
        ["--dataset_name", "you/pairs", "--streaming", "--max_train_steps", "5", "--output_dir", str(tmp_path)]
    )
    assert not streamed.decode_cache and streamed.dataloader_num_workers is None
    assert train_script.default_num_workers(torch.device("cpu")) == 0
    assert 1 <= train_script.default_num_workers(torch.device("cuda"), local_processes=8) <= 8


@pytest.mark.slow
def test_the_decode_cache_and_persistent_workers_train_exactly_the_per_sample_paths_weights(tmp_path):
    write_split(tmp_path / "pairs", "train", 5)  # 8 steps of batch 1 cross an epoch boundary
    write_split(tmp_path / "pairs", "validation", 1, seed=50)
    data = ["--train_data_dir", tmp_path / "pairs", "--random_flip"]
    common = [*data, "--max_train_steps", 8, "--validation_steps", 8]
    runs = {
        "per_sample": ["--no-decode_cache"],
        "cached": [],  # the default
        "cached_workers": ["--dataloader_num_workers", 2],  # persistent: they must follow set_epoch
    }
    for name, flags in runs.items():
        assert succeeded(launch([*common, *flags, "--output_dir", tmp_path / name]))
    assert equal_weights(tmp_path / "per_sample", tmp_path / "cached")
    assert equal_weights(tmp_path / "per_sample", tmp_path / "cached_workers")
    # stopped at step 4 and resumed, with persistent workers: the resumed epoch skips its first batches
    stopped = [*data, "--dataloader_num_workers", 2, "--checkpointing_steps", 4, "--output_dir", tmp_path / "stop"]
    assert succeeded(launch([*stopped, "--max_train_steps", 4, "--validation_steps", 4]))
    resumed = ["--max_train_steps", 8, "--validation_steps", 8, "--resume_from_checkpoint", "latest"]
    assert succeeded(launch([*stopped, *resumed]))
    assert equal_weights(tmp_path / "per_sample", tmp_path / "stop")
