"""The data layer: sources, column mapping, synchronized augmentation, corrupt samples, balancing, edge smoothing."""

import io
import logging
import random
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ghibligan.data import (
    PairedImageDataset,
    PairTransform,
    StreamingPairedDataset,
    UnreadableBudget,
    UnreadableDataError,
    brightness_balanced_sampler,
    build_pair_datasets,
    collate_pairs,
    dataset_brightness,
    edge_smooth,
    load_pairs_dataset,
)
from ghibligan.training import tone_head_samples

from .helpers import photo_like


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_dataset(columns: dict[str, list[np.ndarray]]) -> datasets.Dataset:
    data = {name: [{"bytes": png_bytes(a), "path": None} for a in arrays] for name, arrays in columns.items()}
    features = datasets.Features({name: datasets.Image() for name in columns})
    return datasets.Dataset.from_dict(data, features=features)


def test_hub_schemas_work_by_column_mapping_and_wrong_names_list_the_columns():
    rows = image_dataset({"raw": [photo_like(40, 40)], "Ghibli": [photo_like(40, 40, seed=1)]})
    pairs = PairedImageDataset(rows, "raw", "Ghibli", PairTransform(32, center_crop=True))
    assert pairs[0]["input"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"`input_column` 'input_image' not in dataset columns \['raw', 'Ghibli'\]"):
        PairedImageDataset(rows, "input_image", "Ghibli", PairTransform(32))
    with pytest.raises(ValueError, match=r"`target_column` 'cartoonized_image' not in dataset columns"):
        PairedImageDataset(rows, "raw", "cartoonized_image", PairTransform(32))


def test_input_and_target_get_the_same_random_crop_and_flip():
    photo = photo_like(90, 70)
    rows = image_dataset({"input_image": [photo], "target_image": [photo]})
    pairs = PairedImageDataset(rows, "input_image", "target_image", PairTransform(48, random_flip=True))
    crops = set()
    for epoch in range(12):
        pairs.set_epoch(epoch)
        item = pairs[0]
        assert item["input"].shape == (3, 48, 48)
        assert torch.equal(item["input"], item["target"])  # same crop, same flip
        assert item["input"].min() >= -1 and item["input"].max() <= 1
        crops.add(item["input"].sum().item())
    assert len(crops) > 3  # and the augmentation is actually random


def test_side_by_side_layout_and_direction():
    left, right = np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)
    rows = image_dataset({"image": [np.concatenate([left, right], axis=1)]})
    a_to_b = PairedImageDataset(rows, "image", "", PairTransform(32, center_crop=True), paired_layout="side_by_side")
    item = a_to_b[0]
    assert item["input"].max() == -1 and item["target"].min() == 1
    b_to_a = PairedImageDataset(
        rows, "image", "", PairTransform(32, center_crop=True), paired_layout="side_by_side", direction="BtoA"
    )
    assert b_to_a[0]["input"].min() == 1


def test_modes_are_converted_to_rgb():
    gray = np.asarray(Image.fromarray(photo_like(40, 40)).convert("L"))
    rgba = np.dstack([photo_like(40, 40), np.full((40, 40), 100, np.uint8)])
    rows = image_dataset({"input_image": [gray], "target_image": [rgba]})
    item = PairedImageDataset(rows, "input_image", "target_image", PairTransform(32))[0]
    assert item["input"].shape == item["target"].shape == (3, 32, 32)


def corrupt_rows(count: int, broken: set[int]) -> datasets.Dataset:
    """``count`` rows of distinct photos; the inputs of rows ``broken`` are truncated PNGs named ``broken_{i}.png``."""
    good = [{"bytes": png_bytes(photo_like(40, 40, seed=i)), "path": None} for i in range(count)]
    inputs = [{"bytes": g["bytes"][:60], "path": f"broken_{i}.png"} if i in broken else g for i, g in enumerate(good)]
    return datasets.Dataset.from_dict(
        {"input_image": inputs, "target_image": good},
        features=datasets.Features({"input_image": datasets.Image(), "target_image": datasets.Image()}),
    )


def test_an_unreadable_row_is_replaced_by_the_same_other_row_everywhere(caplog):
    """Every process (a fresh dataset object each) must get a full batch and the same replacement, or DDP desyncs."""
    pairs = PairedImageDataset(corrupt_rows(6, {1}), "input_image", "target_image", PairTransform(32), seed=5)
    with caplog.at_level(logging.WARNING):
        loader = torch.utils.data.DataLoader(pairs, batch_size=3, collate_fn=collate_pairs)
        batch = next(iter(loader))
    assert batch["input"].shape == (3, 3, 32, 32)  # still a full batch
    assert "broken_1.png" in caplog.text
    replacement = pairs.replacement(1, 1) if pairs.replacement(1, 1) != 1 else pairs.replacement(1, 2)
    assert torch.equal(batch["input"][1], pairs[replacement]["input"])  # a readable row, with its own crop
    other = PairedImageDataset(corrupt_rows(6, {1}), "input_image", "target_image", PairTransform(32), seed=5)
    assert torch.equal(other[1]["input"], batch["input"][1])  # the same replacement and crop on another "process"


def test_too_many_unreadable_rows_stop_promptly_naming_them():
    everything_broken = PairedImageDataset(
        corrupt_rows(4, {0, 1, 2, 3}), "input_image", "target_image", PairTransform(32)
    )
    with pytest.raises(UnreadableDataError, match=r"16 rows in a row could not be decoded, e\.g\. row 0: broken_0"):
        everything_broken[0]  # not an endless loop
    budget = UnreadableBudget(max_fraction=0.2, min_reads=10)
    a_third_broken = PairedImageDataset(
        corrupt_rows(30, set(range(0, 30, 3))), "input_image", "target_image", PairTransform(32), budget=budget
    )
    with pytest.raises(
        UnreadableDataError, match=r"of the \d+ rows read so far could not be decoded \(more than 20%\)"
    ):
        for index in range(30):
            a_third_broken[index]
    assert budget.reads < 30  # stopped as soon as the budget was spent
    tolerant = PairedImageDataset(
        corrupt_rows(30, set(range(0, 30, 3))), "input_image", "target_image", PairTransform(32),
        budget=UnreadableBudget(max_fraction=0.5),
    )  # fmt: skip
    assert all(tolerant[i]["input"].shape == (3, 32, 32) for i in range(30))


def test_crops_are_a_function_of_seed_epoch_and_row():
    rows = image_dataset({"input_image": [photo_like(90, 70)], "target_image": [photo_like(90, 70)]})

    def crop(seed, epoch):
        pairs = PairedImageDataset(rows, "input_image", "target_image", PairTransform(48, random_flip=True), seed=seed)
        pairs.set_epoch(epoch)
        torch.manual_seed(epoch)  # the global RNG plays no part
        return pairs[0]["input"]

    assert torch.equal(crop(0, 3), crop(0, 3))
    assert len({crop(0, epoch).sum().item() for epoch in range(8)}) > 3  # and differ from epoch to epoch
    assert not torch.equal(crop(0, 1), crop(1, 1))


def test_crops_and_replacements_do_not_depend_on_dataloader_workers():
    pairs = PairedImageDataset(corrupt_rows(4, {2}), "input_image", "target_image", PairTransform(32), seed=1)
    pairs.set_epoch(3)

    def batches(num_workers):
        loader = torch.utils.data.DataLoader(pairs, batch_size=2, num_workers=num_workers, collate_fn=collate_pairs)
        return [batch["input"] for batch in loader]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2), strict=True))


def test_a_stream_leaves_unreadable_rows_out_within_the_budget(tmp_path):
    corrupt_rows(6, {2}).to_parquet(str(tmp_path / "rows.parquet"))
    stream = datasets.load_dataset("parquet", data_files=str(tmp_path / "rows.parquet"), split="train", streaming=True)
    assert (
        len(list(StreamingPairedDataset(PairedImageDataset(stream, "input_image", "target_image", PairTransform(32)))))
        == 5
    )
    corrupt_rows(6, set(range(6))).to_parquet(str(tmp_path / "dead.parquet"))
    stream = datasets.load_dataset("parquet", data_files=str(tmp_path / "dead.parquet"), split="train", streaming=True)
    dead = PairedImageDataset(
        stream, "input_image", "target_image", PairTransform(32), budget=UnreadableBudget(max_in_a_row=3)
    )
    with pytest.raises(UnreadableDataError, match="3 rows in a row"):
        list(StreamingPairedDataset(dead))


def test_brightness_balancing_rebalances_a_skewed_set():
    dark = [np.full((16, 16, 3), 20, np.uint8)] * 10
    bright = [np.full((16, 16, 3), 220, np.uint8)] * 90
    rows = image_dataset({"input_image": dark + bright, "target_image": dark + bright})
    pairs = PairedImageDataset(rows, "input_image", "target_image", PairTransform(16))
    values = dataset_brightness(pairs)
    assert sum(v < 0.5 for v in values) == 10
    sampler = brightness_balanced_sampler(values, num_samples=20_000, seed=0)
    drawn = Counter(values[i] < 0.5 for i in sampler)
    assert 0.45 < drawn[True] / 20_000 < 0.55  # 10 % of the data, ~50 % of the draws
    uniform = Counter(values[i] < 0.5 for i in torch.randint(0, 100, (20_000,)).tolist())
    assert uniform[True] / 20_000 < 0.15  # what plain shuffling gives


def test_edge_smoothing_blurs_only_around_edges():
    cartoon = np.full((64, 64, 3), 200, np.uint8)
    cartoon[:, 32:] = 30  # one vertical edge
    cartoon[5:10, 5:10] = 201  # a faint patch: no Canny edge there
    smoothed = edge_smooth(cartoon)
    changed = np.any(smoothed != cartoon, axis=2)
    assert changed[:, 28:36].any()  # the edge is blurred
    assert not changed[:, :26].any() and not changed[:, 38:].any()  # flat regions untouched
    assert np.array_equal(smoothed[5:10, 5:10], cartoon[5:10, 5:10])


def test_local_sources(tmp_path):
    photo, cartoon = photo_like(40, 40), 255 - photo_like(40, 40)
    # two sibling folders named after the columns
    for column, array in (("input_image", photo), ("target_image", cartoon)):
        (tmp_path / "folders" / column).mkdir(parents=True)
        for name in ("a", "b"):
            Image.fromarray(array).save(tmp_path / "folders" / column / f"{name}.png")
    Image.fromarray(photo).save(tmp_path / "folders" / "input_image" / "lonely.png")
    loaded = load_pairs_dataset(train_data_dir=str(tmp_path / "folders"))["train"]
    assert len(loaded) == 2 and set(loaded.column_names) == {"input_image", "target_image"}
    # a save_to_disk folder and a single parquet file
    rows = image_dataset({"input_image": [photo] * 3, "target_image": [cartoon] * 3})
    rows.save_to_disk(str(tmp_path / "saved"))
    assert len(load_pairs_dataset(train_data_dir=str(tmp_path / "saved"))["train"]) == 3
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    assert len(load_pairs_dataset(train_data_dir=str(tmp_path / "rows.parquet"))["train"]) == 3
    with pytest.raises(ValueError, match="Don't know how to read `train_data_dir`"):
        (tmp_path / "empty").mkdir()
        load_pairs_dataset(train_data_dir=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="exactly one of"):
        load_pairs_dataset()


def test_same_named_folders_do_not_share_a_cache_entry(tmp_path):
    """datasets caches load_dataset(folder) by the folder's name; our loader must not return another folder's rows."""
    for count, parent in ((5, "a"), (3, "b")):
        rows = image_dataset({"input_image": [photo_like(8, 8)] * count, "target_image": [photo_like(8, 8)] * count})
        (tmp_path / parent / "pairs" / "data").mkdir(parents=True)
        rows.to_parquet(str(tmp_path / parent / "pairs" / "data" / "train-00000.parquet"))
    assert len(load_pairs_dataset(train_data_dir=str(tmp_path / "a" / "pairs"))["train"]) == 5
    assert len(load_pairs_dataset(train_data_dir=str(tmp_path / "b" / "pairs"))["train"]) == 3


def test_streaming_source(tmp_path):
    rows = image_dataset(
        {"input_image": [photo_like(40, 40, seed=i) for i in range(5)], "target_image": [photo_like(40, 40)] * 5}
    )
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    stream = datasets.load_dataset("parquet", data_files=str(tmp_path / "rows.parquet"), split="train", streaming=True)
    pairs = PairedImageDataset(stream, "input_image", "target_image", PairTransform(32))
    items = list(StreamingPairedDataset(pairs))
    assert len(items) == 5 and items[0]["input"].shape == (3, 32, 32)


def test_transform_resizes_a_mismatched_target_and_never_crops_out_of_bounds():
    transform = PairTransform(64)
    source, target = Image.fromarray(photo_like(200, 30)), Image.fromarray(photo_like(100, 15))
    a, b = transform(source, target, random.Random(0))
    assert a.size == b.size == (64, 64)


def test_tone_head_samples_from_a_dataset_and_from_a_stream(tmp_path):
    """The tone head's warm-start crops: random rows (with repeats) of a dataset, the first rows of a stream."""
    rows = image_dataset(
        {"input_image": [photo_like(40, 40, seed=i) for i in range(5)], "target_image": [photo_like(40, 40)] * 5}
    )
    pairs = PairedImageDataset(rows, "input_image", "target_image", PairTransform(32))
    torch.manual_seed(0)
    first = tone_head_samples(pairs, streaming=False, count=7, seed=3)
    torch.manual_seed(0)
    again = tone_head_samples(pairs, streaming=False, count=7, seed=3)
    assert len(first) == 7 and first[0]["input"].shape == first[0]["target"].shape == (3, 32, 32)
    assert all(torch.equal(a["input"], b["input"]) for a, b in zip(first, again, strict=True))  # same on every rank
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    stream = datasets.load_dataset("parquet", data_files=str(tmp_path / "rows.parquet"), split="train", streaming=True)
    streamed = tone_head_samples(PairedImageDataset(stream, "input_image", "target_image", PairTransform(32)), True, 3)
    assert len(streamed) == 3 and streamed[2]["input"].shape == (3, 32, 32)


def write_pairs(folder, counts: dict[str, int]) -> str:
    """A make-pairs-like folder: ``data/{split}-00000.parquet`` with ``count`` rows of distinct photos per split."""
    (folder / "data").mkdir(parents=True)
    offset = 0
    for split, count in counts.items():
        photos = [photo_like(48, 40, seed=offset + i) for i in range(count)]
        offset += count
        rows = image_dataset({"input_image": photos, "target_image": [255 - p for p in photos]})
        rows.to_parquet(str(folder / "data" / f"{split}-00000.parquet"))
    return str(folder)


def test_build_pair_datasets_holds_out_validation_rows_by_fraction_or_by_split(tmp_path):
    folder = write_pairs(tmp_path / "pairs", {"train": 20, "validation": 3})
    train, validation = build_pair_datasets(train_data_dir=folder, resolution=32)
    assert (len(train), len(validation)) == (20, 3)  # the dataset's own validation split by default
    assert train[0]["input"].shape == (3, 32, 32)
    whole = validation.whole_pairs(2)
    assert len(whole) == 2 and whole[0][0].size == whole[0][1].size == (48, 40)  # whole images, not crops
    train, validation = build_pair_datasets(train_data_dir=folder, validation_split="0.25", max_train_samples=6)
    assert (len(train), len(validation)) == (6, 5)  # 5 of the 20 training rows held out, then 6 of the rest kept
    held_out = {validation.dataset[i]["input_image"]["bytes"] for i in range(len(validation))}
    assert not held_out & {train.dataset[i]["input_image"]["bytes"] for i in range(len(train))}
    with pytest.raises(ValueError, match="`validation_split` 'test' is neither a split"):
        build_pair_datasets(train_data_dir=folder, validation_split="test")
    with pytest.raises(ValueError, match=r"`split` 'dev' not in the dataset's splits \['train', 'validation'\]"):
        build_pair_datasets(train_data_dir=folder, split="dev")


def test_build_pair_datasets_without_a_validation_split_holds_out_five_percent(tmp_path):
    folder = write_pairs(tmp_path / "pairs", {"train": 40})
    train, validation = build_pair_datasets(train_data_dir=folder, edge_smoothing=True, resolution=32)
    assert (len(train), len(validation)) == (38, 2)
    assert train[0]["target_smoothed"].shape == (3, 32, 32)  # CartoonGAN's edge-promoting negatives


def test_build_pair_datasets_on_a_stream_takes_rows(tmp_path, monkeypatch):
    write_pairs(tmp_path / "pairs", {"train": 6})
    streamed = datasets.load_dataset("parquet", data_dir=str(tmp_path / "pairs" / "data"), streaming=True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: streamed)  # as a Hub stream would come
    train, validation = build_pair_datasets(
        dataset_name="you/pairs", streaming=True, num_validation_rows=2, max_train_samples=4, resolution=32
    )
    assert len(list(StreamingPairedDataset(train))) == 4
    assert len(validation.whole_pairs(10)) == 2  # a stream cannot be split: its first rows are shown
