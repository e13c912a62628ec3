"""Paired images for training: any source → synchronized-augmented tensors in [-1, 1].

Sources (`load_pairs_dataset`): a Hub dataset id (optionally streamed), or a local path holding parquet files (a
`make-pairs` output), a ``save_to_disk`` folder, an imagefolder with a ``metadata.jsonl`` naming two image columns
(``input_image_file_name``, ``target_image_file_name``), or two sibling folders named after the columns with matching
file names. Local sources are always resolved to explicit absolute files: `datasets.load_dataset(folder)` caches by the
folder's *name*, so two folders called ``pairs`` would silently share one cache entry.

`PairedImageDataset` decodes images itself, so a corrupt sample never crashes an epoch: it is replaced, with a warning
naming it, by another row chosen from ``(seed, index)`` alone, so every process still yields full batches and DDP's
collectives stay in step. An `UnreadableBudget` stops the run with `UnreadableDataError` when too many rows fail.
The crop and flip of a sample are a function of ``(seed, epoch, index)``, so a resumed run (and any number of
DataLoader workers, persistent ones too) sees exactly the crops of an uninterrupted one; `ghibligan.data_cache` serves
the same samples from a decode-once uint8 cache. With several target columns (one per style, as
multi-teacher `make-pairs` writes them), each sample also draws its style from ``(seed, epoch, index)`` and carries it
as ``style`` (the column's position), so one dataset trains a style-conditioned generator.
`brightness_balanced_sampler` fixes the seed project's failure mode (dark photos were rare, so the model blurred them)
by sampling brightness bins equally.
"""

from __future__ import annotations

import io
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import WeightedRandomSampler

from .image_io import IMAGE_EXTENSIONS, ImageLoadError, load_image, pil_to_tensor

logger = logging.getLogger(__name__)

PAIRED_LAYOUTS = ("separate", "side_by_side")
DIRECTIONS = ("AtoB", "BtoA")
DEFAULT_VALIDATION_FRACTION = 0.05
DEFAULT_MAX_UNREADABLE_FRACTION = 0.2
# What Pillow raises on broken image data (truncated, not an image, a decompression bomb)
PILLOW_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


# -- sources ---------------------------------------------------------------------------------------------------------


def _parquet_splits(files: list[Path], split: str) -> dict[str, list[str]]:
    """Group parquet files by the split their name starts with (``train-00000.parquet``); unnamed ones are ``split``."""
    groups: dict[str, list[str]] = {}
    for file in sorted(files):
        name = file.name.split("-")[0] if "-" in file.name else split
        groups.setdefault(name, []).append(str(file.resolve()))
    return groups


def load_pairs_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    streaming: bool = False,
    input_column: str = "input_image",
    target_column: str | Sequence[str] = "target_image",
    cache_dir: str | None = None,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Load every split of a paired dataset from the Hub or a local path (see the module docstring)."""
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("Pass exactly one of `dataset_name` (a Hub dataset id) and `train_data_dir` (a local path).")
    if dataset_name is not None:
        return datasets.load_dataset(dataset_name, dataset_config_name, streaming=streaming, cache_dir=cache_dir)

    path = Path(train_data_dir)
    if not path.exists():
        raise FileNotFoundError(f"`train_data_dir` {train_data_dir!r} does not exist.")
    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"`train_data_dir` {train_data_dir!r}: a file must be .parquet (or pass a folder).")
        return datasets.load_dataset("parquet", data_files={split: [str(path.resolve())]}, cache_dir=cache_dir)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():  # save_to_disk
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({split: loaded})
    parquet = [f for f in path.rglob("*.parquet") if not f.name.startswith(".")]
    if parquet:
        return datasets.load_dataset("parquet", data_files=_parquet_splits(parquet, split), cache_dir=cache_dir)
    if (path / "metadata.jsonl").is_file() or (path / "metadata.csv").is_file():
        files = [str(f.resolve()) for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")]
        return datasets.load_dataset("imagefolder", data_files={split: files}, cache_dir=cache_dir)
    columns = [input_column, *as_columns(target_column)]
    if all((path / column).is_dir() for column in columns):
        return datasets.DatasetDict({split: _sibling_folders(path, columns)})
    raise ValueError(
        f"Don't know how to read `train_data_dir` {train_data_dir!r}: expected parquet files, a save_to_disk folder, "
        f"an imagefolder with metadata.jsonl, or sub-folders {columns} holding images with matching names."
    )


def as_columns(target_column: str | Sequence[str]) -> list[str]:
    """One target column or several (one per style) → a list of column names."""
    return [target_column] if isinstance(target_column, str) else list(target_column)


def _sibling_folders(path: Path, columns: list[str]) -> datasets.Dataset:
    def by_stem(folder: Path) -> dict[str, str]:
        return {f.stem: str(f.resolve()) for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS}

    files = [by_stem(path / column) for column in columns]
    names = sorted(set.intersection(*(set(found) for found in files)))
    unmatched = sorted(set.union(*(set(found) for found in files)) - set(names))
    if unmatched:
        logger.warning("%d images are missing from another folder and are left out: %s", len(unmatched), unmatched[:10])
    if not names:
        raise ValueError(f"No file names match between the folders {[str(path / column) for column in columns]}.")
    rows = {column: [found[n] for n in names] for column, found in zip(columns, files, strict=True)}
    dataset = datasets.Dataset.from_dict(rows)
    for column in columns:
        dataset = dataset.cast_column(column, datasets.Image())
    return dataset


def check_columns(dataset, columns: dict[str, str]) -> None:
    """``columns`` maps argument name → column; raise naming the argument and the columns that exist."""
    existing = list(dataset.column_names or (dataset.features or {}).keys())
    if not existing:  # a stream whose schema is unknown until read
        return
    for argument, column in columns.items():
        if column not in existing:
            raise ValueError(f"`{argument}` {column!r} not in dataset columns {existing}.")


# -- train / validation ----------------------------------------------------------------------------------------------


def split_train_validation(
    splits: datasets.DatasetDict | datasets.IterableDatasetDict,
    split: str = "train",
    validation_split: str | float | None = None,
    num_validation_rows: int = 4,
    max_train_samples: int | None = None,
    seed: int = 0,
) -> tuple[datasets.Dataset | datasets.IterableDataset, datasets.Dataset | datasets.IterableDataset]:
    """The training rows and the validation rows of a loaded dataset.

    Args:
        splits: what `load_pairs_dataset` returned.
        split: the split to train on.
        validation_split: the name of a split, or a fraction of the training rows to hold out (a float, or a string
            such as ``"0.05"``). Defaults to the ``validation`` split when there is one, else a 5 % hold-out. A stream
            cannot be split: its first ``num_validation_rows`` training rows are shown instead.
        num_validation_rows: rows a streamed dataset shows for validation.
        max_train_samples: keep only this many training rows (after the hold-out).
        seed: seed of the hold-out split.
    """
    if split not in splits:
        raise ValueError(f"`split` {split!r} not in the dataset's splits {list(splits)}.")
    train_rows = splits[split]
    streaming = isinstance(train_rows, datasets.IterableDataset)
    if validation_split is None:
        validation_split = (
            "validation" if "validation" in splits and split != "validation" else DEFAULT_VALIDATION_FRACTION
        )
    try:
        fraction = float(validation_split)
    except ValueError:
        fraction = None
    if fraction is None:
        if validation_split not in splits:
            raise ValueError(
                f"`validation_split` {validation_split!r} is neither a split of the dataset {list(splits)} "
                "nor a fraction such as 0.05."
            )
        validation_rows = splits[validation_split]
    elif not 0 <= fraction < 1:
        raise ValueError(f"`validation_split` must be a fraction in [0, 1) or a split name, got {validation_split!r}.")
    elif streaming:
        validation_rows = train_rows.take(num_validation_rows)
    elif 1 <= round(fraction * len(train_rows)) < len(train_rows):
        parts = train_rows.train_test_split(test_size=round(fraction * len(train_rows)), seed=seed)
        train_rows, validation_rows = parts["train"], parts["test"]
    else:
        logger.warning("No rows held out for validation: validation shows training rows.")
        validation_rows = train_rows
    if max_train_samples is not None:
        if max_train_samples < 1:
            raise ValueError(f"`max_train_samples` must be >= 1 or None, got {max_train_samples}.")
        if streaming:
            train_rows = train_rows.take(max_train_samples)
        else:
            train_rows = train_rows.select(range(min(max_train_samples, len(train_rows))))
    return train_rows, validation_rows


def build_pair_datasets(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    validation_split: str | float | None = None,
    num_validation_rows: int = 4,
    max_train_samples: int | None = None,
    streaming: bool = False,
    input_column: str = "input_image",
    target_column: str | Sequence[str] = "target_image",
    paired_layout: str = "separate",
    direction: str = "AtoB",
    resolution: int = 256,
    center_crop: bool = False,
    random_flip: bool = False,
    edge_smoothing: bool = False,
    cache_dir: str | None = None,
    seed: int = 0,
    max_unreadable_fraction: float = DEFAULT_MAX_UNREADABLE_FRACTION,
) -> tuple[PairedImageDataset, PairedImageDataset]:
    """Load a paired dataset (`load_pairs_dataset`), split it (`split_train_validation`) and wrap both parts.

    Returns:
        `(train, validation)`: training crops of ``resolution`` with the synchronized augmentation (``seed`` fixes
        the crops, the styles drawn when ``target_column`` is a list, and the replacements of unreadable rows; more
        than ``max_unreadable_fraction`` of them unreadable stops training), and whole validation images (no
        transform; read them with `PairedImageDataset.whole_pairs`).
    """
    splits = load_pairs_dataset(
        dataset_name=dataset_name,
        dataset_config_name=dataset_config_name,
        train_data_dir=train_data_dir,
        split=split,
        streaming=streaming,
        input_column=input_column,
        target_column=target_column,
        cache_dir=cache_dir,
    )
    train_rows, validation_rows = split_train_validation(
        splits, split, validation_split, num_validation_rows, max_train_samples, seed
    )
    columns = dict(input_column=input_column, target_column=target_column, paired_layout=paired_layout)
    train = PairedImageDataset(
        train_rows,
        transform=PairTransform(resolution, center_crop=center_crop, random_flip=random_flip),
        direction=direction,
        edge_smoothing=edge_smoothing,
        seed=seed,
        budget=UnreadableBudget(max_fraction=max_unreadable_fraction),
        **columns,
    )
    validation = PairedImageDataset(validation_rows, direction=direction, **columns)
    return train, validation


# -- images ----------------------------------------------------------------------------------------------------------


def decode_image(value) -> Image.Image:
    """A dataset cell (PIL image, ``{"bytes", "path"}`` dict, or path) → 8-bit RGB, or `ImageLoadError`."""
    if isinstance(value, dict):
        if value.get("bytes"):
            try:
                image = Image.open(io.BytesIO(value["bytes"]))
                image.load()
            except PILLOW_DECODE_ERRORS as error:
                raise ImageLoadError(f"{value.get('path') or 'embedded image'}: cannot decode ({error}).") from error
            return load_image(image).rgb
        value = value.get("path")
    if value is None:
        raise ImageLoadError("empty image cell")
    return load_image(value).rgb


def edge_smooth(cartoon: np.ndarray, kernel_size: int = 5) -> np.ndarray:
    """CartoonGAN's edge-promoting negatives: blur a cartoon inside its dilated edges only.

    Canny(100, 200) on the grayscale image → dilate with a ``kernel_size`` square → Gaussian blur copied into the
    dilated region. The result keeps the colours but loses clear edges, and is shown to D as *fake*.
    """
    gray = cv2.cvtColor(cartoon, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, 100, 200)
    dilated = cv2.dilate(edges, np.ones((kernel_size, kernel_size), np.uint8)) > 0
    blurred = cv2.GaussianBlur(cartoon, (kernel_size, kernel_size), 0)
    out = cartoon.copy()
    out[dilated] = blurred[dilated]
    return out


class PairTransform:
    """The same random resize / crop / flip on input and target, then [-1, 1] tensors.

    Like pix2pix's ``resize_and_crop``: the shorter side is resized to ``load_size`` (default ``1.12 × resolution``)
    and a ``resolution`` square is cropped (at random, or centred with ``center_crop``).
    """

    def __init__(self, resolution: int, center_crop: bool = False, random_flip: bool = False, load_size=None):
        self.resolution = resolution
        self.load_size = load_size or round(resolution * 286 / 256)
        self.center_crop, self.random_flip = center_crop, random_flip

    def __call__(self, source: Image.Image, target: Image.Image, rng: random.Random) -> tuple[Image.Image, Image.Image]:
        source, target = self.resize(source, target)
        left, top, flip = self.crop_box(source.size, rng)
        box = (left, top, left + self.resolution, top + self.resolution)
        source, target = source.crop(box), target.crop(box)
        if flip:
            source, target = (im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in (source, target))
        return source, target

    def resize(self, source: Image.Image, target: Image.Image) -> tuple[Image.Image, Image.Image]:
        """The deterministic part: the target to the source's size, then both to a shorter side of ``load_size``
        (what the decode-once cache stores)."""
        if target.size != source.size:
            target = target.resize(source.size, Image.Resampling.BICUBIC)
        scale = self.load_size / min(source.size)
        size = (max(self.resolution, round(source.width * scale)), max(self.resolution, round(source.height * scale)))
        return source.resize(size, Image.Resampling.BICUBIC), target.resize(size, Image.Resampling.BICUBIC)

    def crop_box(self, size: tuple[int, int], rng: random.Random) -> tuple[int, int, bool]:
        """The random part: ``(left, top, flip)`` of the crop of a resized ``(width, height)`` pair, drawn from
        ``rng`` (the same draws, in the same order, whether the crop then runs here or batched on the device)."""
        if self.center_crop:
            left, top = (size[0] - self.resolution) // 2, (size[1] - self.resolution) // 2
        else:
            left, top = rng.randint(0, size[0] - self.resolution), rng.randint(0, size[1] - self.resolution)
        return left, top, bool(self.random_flip and rng.random() < 0.5)


class UnreadableDataError(RuntimeError):
    """Too many training rows could not be decoded: the data, not the run, needs fixing."""


class UnreadableBudget:
    """How many unreadable rows a run tolerates before `UnreadableDataError` stops it.

    Args:
        max_fraction (`float`, *optional*, defaults to 0.2): stop once more than this fraction of the rows read so far
            were unreadable (checked after ``min_reads`` reads, so the first bad row of a run does not stop it).
        max_in_a_row (`int`, *optional*, defaults to 16): stop once this many rows in a row were unreadable (a
            sample and its replacements): with a healthy dataset that never happens, with a dead one it happens at
            once instead of looping forever.
        min_reads (`int`, *optional*, defaults to 32): reads before ``max_fraction`` is checked.

    Each DataLoader worker (and each process) counts its own reads: the fraction is estimated on what it read.
    """

    def __init__(
        self, max_fraction: float = DEFAULT_MAX_UNREADABLE_FRACTION, max_in_a_row: int = 16, min_reads: int = 32
    ):
        if not 0 <= max_fraction <= 1:
            raise ValueError(f"`max_fraction` must be in [0, 1], got {max_fraction!r}.")
        self.max_fraction, self.max_in_a_row, self.min_reads = max_fraction, max(1, max_in_a_row), min_reads
        self.reads, self.failures = 0, 0
        self.examples: list[str] = []  # "row 7: broken.png: cannot decode (...)", the first few

    def read(self, index: int, error: Exception | None = None, in_a_row: int = 0) -> None:
        """Count one read of row ``index`` (failed with ``error``, the ``in_a_row``-th failure of one sample);
        raise `UnreadableDataError` naming example rows once the budget is spent."""
        self.reads += 1
        if error is None:
            return
        self.failures += 1
        if len(self.examples) < 5:
            self.examples.append(f"row {index}: {error}")
        if in_a_row >= self.max_in_a_row:
            reason = f"{in_a_row} rows in a row could not be decoded"
        elif self.reads >= self.min_reads and self.failures > self.max_fraction * self.reads:
            reason = (
                f"{self.failures} of the {self.reads} rows read so far could not be decoded "
                f"(more than {self.max_fraction:.0%})"
            )
        else:
            return
        raise UnreadableDataError(
            f"{reason}, e.g. {'; '.join(self.examples)}. Fix or remove these rows (re-run make-pairs, or check "
            "the files), or tolerate more of them with --max_unreadable_fraction."
        )


class PairedImageDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``{"input", "target"[, "target_smoothed"][, "style"]}`` tensors.

    With a list of target columns (one per style), each sample draws one of them from ``(seed, epoch, index)``
    (uniformly), decodes only that target, and returns its position in the list as ``style`` (a 0-d LongTensor;
    `collate_pairs` stacks them into the (B,) tensor a style-conditioned generator takes).

    An unreadable row is replaced, with a warning naming it, by another row drawn from ``(seed, index, attempt)``
    alone: the same on every process and in every worker, so each process always yields full batches (a DDP process
    that skipped a batch would put the collectives out of step). ``budget`` stops the run when too many rows fail.

    Args:
        dataset: a `datasets.Dataset` with the two image columns (or one side-by-side column); a streamed
            `datasets.IterableDataset` is read through `StreamingPairedDataset` or `whole_pairs`.
        target_column: the column of the targets, or a list of them, one per style (style ``i`` is column ``i``).
        transform: the synchronized crop / flip; ``None`` gives whole images (the target resized to the input's size).
        paired_layout: ``"separate"`` (two columns) or ``"side_by_side"`` (one image holding A|B, pix2pix style).
        direction: ``"AtoB"`` or ``"BtoA"`` for the side-by-side layout.
        edge_smoothing: also return the edge-smoothed target (CartoonGAN).
        seed: seed of the crops and flips (with the epoch and the row: see `set_epoch`) and of the replacements.
        budget: the unreadable rows tolerated (default: `UnreadableBudget()`, 20 %).
    """

    def __init__(
        self,
        dataset: datasets.Dataset | datasets.IterableDataset,
        input_column: str,
        target_column: str | Sequence[str],
        transform: PairTransform | None = None,
        paired_layout: str = "separate",
        direction: str = "AtoB",
        edge_smoothing: bool = False,
        seed: int = 0,
        budget: UnreadableBudget | None = None,
    ):
        if paired_layout not in PAIRED_LAYOUTS:
            raise ValueError(f"`paired_layout` must be one of {list(PAIRED_LAYOUTS)}, got {paired_layout!r}.")
        if direction not in DIRECTIONS:
            raise ValueError(f"`direction` must be one of {list(DIRECTIONS)}, got {direction!r}.")
        target_columns = as_columns(target_column)
        if not target_columns or len(set(target_columns)) != len(target_columns):
            raise ValueError(f"`target_column` must be one column or a list of distinct ones, got {target_column!r}.")
        if paired_layout != "separate" and len(target_columns) > 1:
            raise ValueError(f"`paired_layout` {paired_layout!r} has one target: pass one `target_column`.")
        columns = {"input_column": input_column}
        if paired_layout == "separate":
            for i, column in enumerate(target_columns):
                columns["target_column" if len(target_columns) == 1 else f"target_column[{i}]"] = column
        check_columns(dataset, columns)
        for column in columns.values():  # decode ourselves, so one corrupt file cannot crash the epoch
            if dataset.features and isinstance(dataset.features.get(column), datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset, self.transform = dataset, transform
        self.input_column, self.target_columns = input_column, target_columns
        self.paired_layout, self.direction, self.edge_smoothing = paired_layout, direction, edge_smoothing
        self.seed = seed
        # in shared memory: persistent DataLoader workers hold copies of the dataset and must see set_epoch
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.budget = budget or UnreadableBudget()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's crops and flips (each a function of the seed, the epoch and the row), in this process
        and in its DataLoader workers, persistent ones included."""
        self._epoch.fill_(epoch)

    def crop_rng(self, index: int) -> random.Random:
        """The RNG of row ``index``'s crop and flip this epoch: a function of (seed, epoch, row), so the crops are the
        same whatever the workers, processes, batches or resumes."""
        return random.Random(int(np.random.default_rng([self.seed, self.epoch, index]).integers(2**62)))

    @property
    def num_styles(self) -> int:
        """How many target columns (styles) there are; ``style`` is in every sample when it is more than one."""
        return len(self.target_columns)

    def style_of(self, index: int) -> int:
        """The style (target column position) row ``index`` trains on this epoch: a function of (seed, epoch, row)."""
        return int(np.random.default_rng([self.seed, self.epoch, index, 1]).integers(self.num_styles))

    def pair(self, row: dict, style: int = 0) -> tuple[Image.Image, Image.Image]:
        """The (input, target) images of ``row``, the target of style ``style`` (its column's position)."""
        if self.paired_layout == "side_by_side":
            both = decode_image(row[self.input_column])
            half = both.width // 2
            a, b = both.crop((0, 0, half, both.height)), both.crop((half, 0, 2 * half, both.height))
            return (a, b) if self.direction == "AtoB" else (b, a)
        return decode_image(row[self.input_column]), decode_image(row[self.target_columns[style]])

    def whole_pairs(self, limit: int, style: int = 0) -> list[tuple[Image.Image, Image.Image]]:
        """The first ``limit`` readable rows as whole (input, target of style ``style``) RGB images, the target at the
        input's size. Unreadable rows are skipped with a warning naming them. Works on streamed datasets too."""
        found = []
        for index, row in enumerate(self.dataset):
            if len(found) == limit:
                break
            try:
                source, target = self.pair(row, style)
            except ImageLoadError as error:
                logger.warning("Skipping validation row %d: %s", index, error)
                continue
            if target.size != source.size:
                target = target.resize(source.size, Image.Resampling.BICUBIC)
            found.append((source, target))
        return found

    def input_image(self, row: dict) -> Image.Image:
        """Only the input of a row (decodes the target only where both share one side-by-side image)."""
        if self.paired_layout == "side_by_side":
            return self.pair(row)[0]
        return decode_image(row[self.input_column])

    def replacement(self, index: int, attempt: int) -> int:
        """The row read instead of unreadable row ``index`` at its ``attempt``-th failure: random, yet a function of
        ``(seed, index, attempt)`` only, so every process and worker picks the same one."""
        return int(np.random.default_rng([self.seed, index, attempt]).integers(len(self)))

    def __getitem__(self, index: int) -> dict:
        return self.read_replacing_unreadable(index, lambda row_index: self.load(self.dataset[row_index], row_index))

    def read_replacing_unreadable(self, index: int, load: Callable[[int], dict]) -> dict:
        """``load(row)`` of row ``index``, or of its replacements (`replacement`) while it raises `ImageLoadError`,
        each failure named in a warning and counted by the budget. Shared with the decode-once cache."""
        row_index = index
        for attempt in itertools.count(1):  # ends: the budget raises after max_in_a_row failures
            try:
                item = load(row_index)
            except ImageLoadError as error:
                replacement = self.replacement(index, attempt)
                logger.warning("Unreadable row %d (%s): reading row %d instead", row_index, error, replacement)
                self.budget.read(row_index, error, in_a_row=attempt)
                row_index = replacement
                continue
            self.budget.read(row_index)
            return item

    def load(self, row: dict, index: int) -> dict:
        """Row number ``index`` → tensors; `ImageLoadError` if an image cannot be decoded."""
        style = self.style_of(index) if self.num_styles > 1 else 0
        source, target = self.pair(row, style)
        if self.transform is None:
            if target.size != source.size:
                target = target.resize(source.size, Image.Resampling.BICUBIC)
        else:
            source, target = self.transform(source, target, self.crop_rng(index))
        item = {"input": pil_to_tensor(source), "target": pil_to_tensor(target)}
        if self.edge_smoothing:
            item["target_smoothed"] = pil_to_tensor(Image.fromarray(edge_smooth(np.asarray(target))))
        if self.num_styles > 1:
            item["style"] = torch.tensor(style, dtype=torch.long)
        return item


class StreamingPairedDataset(torch.utils.data.IterableDataset):
    """`PairedImageDataset`'s processing over a streamed (`datasets.IterableDataset`) source. Unreadable rows are
    left out (with a warning, within the pairs' budget): accelerate reads a stream on the main process and
    dispatches full batches, so every process still steps together."""

    def __init__(self, pairs: PairedImageDataset):
        self.pairs = pairs

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    def __iter__(self):
        in_a_row = 0
        for index, row in enumerate(self.pairs.dataset):
            try:
                item = self.pairs.load(row, index)
            except ImageLoadError as error:
                in_a_row += 1
                logger.warning("Skipping unreadable row %d of the stream: %s", index, error)
                self.pairs.budget.read(index, error, in_a_row=in_a_row)
                continue
            in_a_row = 0
            self.pairs.budget.read(index)
            yield item


def collate_pairs(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch: ``input``, ``target`` (and ``target_smoothed``), each (B, 3, R, R) (and ``style``,
    (B,) long)."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def brightness(image: Image.Image) -> float:
    """Mean luma in [0, 1], from a thumbnail (cheap)."""
    thumbnail = image.convert("L").resize((32, 32), Image.Resampling.BILINEAR)
    return float(np.asarray(thumbnail, dtype=np.float32).mean() / 255.0)


class EpochWeightedRandomSampler(WeightedRandomSampler):
    """`WeightedRandomSampler` whose draws are a function of ``(seed, epoch)``: the same on every process, and the
    same again when a resumed run calls `set_epoch` (accelerate's DataLoader does, each epoch)."""

    def __init__(self, weights: list[float], num_samples: int, seed: int = 0):
        super().__init__(weights, num_samples, replacement=True, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


def brightness_balanced_sampler(
    values: list[float], num_bins: int = 4, num_samples: int | None = None, seed: int = 0
) -> EpochWeightedRandomSampler:
    """Sample so every brightness bin (equal-width over [0, 1]) is drawn equally often; empty bins are skipped."""
    bins = np.minimum((np.asarray(values) * num_bins).astype(int), num_bins - 1)
    counts = np.bincount(bins, minlength=num_bins)
    weights = 1.0 / counts[bins]
    return EpochWeightedRandomSampler(weights.tolist(), num_samples or len(values), seed=seed)


def dataset_brightness(dataset: PairedImageDataset) -> list[float]:
    """Brightness of every sample's input (0.5 for unreadable ones, which the loader replaces anyway)."""
    values = []
    for index in range(len(dataset)):
        try:
            values.append(brightness(dataset.input_image(dataset.dataset[index])))
        except ImageLoadError:
            values.append(0.5)
    return values
