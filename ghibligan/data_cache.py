"""Decode each training pair once: a uint8 cache of resized pairs, so epochs cost no image decoding and no resizing.

`DecodedPairs` runs `PairedImageDataset`'s decoding and `PairTransform.resize` over every row once, with
`datasets.Dataset.map`, into an Arrow file under the cache folder (memory-mapped; found again by the next run and by
the other processes of a distributed run). Its name is a hash of the rows' datasets fingerprint (local data files
count with their modification times), of the size and modification time of image files the rows name by path, and of
every setting that changes what is stored (columns, layout, direction, resolution, resize): a changed dataset is
decoded anew, never served stale. Disk use: ``(1 + styles) × 3`` bytes per pixel of each resized pair (shorter
side ``load_size``).

A sample is then what the per-sample path (`PairedImageDataset.__getitem__`) would crop, drawn from the same
``(seed, epoch, row)`` RNG, but left for the device to cut: the whole resized uint8 images and the ``crop`` window
``(top, left, flip)``; `ghibligan.augment.crop_pairs` crops, flips and normalizes a batch of them on the device in one
gather, to exactly the tensors of the per-sample path. Unreadable rows are replaced exactly as there
(`PairedImageDataset.read_replacing_unreadable`), multi-style rows draw their style as there, and CartoonGAN's
edge-smoothed target is made from the uint8 crop, as there (it is the only part done per sample on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

from .augment import one_thread
from .data import PairedImageDataset, PairTransform, brightness, decode_image, edge_smooth
from .image_io import ImageLoadError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # part of the cache key: bump when what is stored changes
# Rows from which the one-time decoding runs in several processes: a pool takes about a second to start, a row ~10 ms
PARALLEL_DECODE_MIN_ROWS = 1000
FEATURES = datasets.Features(
    {
        "input": datasets.Value("binary"),
        "targets": datasets.Sequence(datasets.Value("binary")),  # one per style (target column)
        "height": datasets.Value("int32"),
        "width": datasets.Value("int32"),
        "brightness": datasets.Value("float64"),  # of the input photo: `dataset_brightness`'s value exactly
        "error": datasets.Value("string"),  # why the row could not be decoded, else None
    }
)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, e.g. under taskset or a container's
    cpuset; else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_cache_dir() -> Path:
    """Where decoded pairs go when no ``cache_dir`` is given: the datasets cache (``HF_DATASETS_CACHE``)."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "ghibligan_decoded"


def referenced_files_digest(dataset: datasets.Dataset, columns: list[str]) -> str:
    """A hash of (path, size, modification time) of every image file the rows of ``columns`` name by path instead of
    holding its bytes: a folder edited in place changes the cache key, though not the dataset's fingerprint."""
    digest = hashlib.sha256()
    for column in (c for c in columns if c in dataset.column_names):
        cells = dataset.data.column(column)
        if pa.types.is_struct(cells.type):  # an image column: {"bytes", "path"}
            paths = [cell["path"] for cell in cells.to_pylist() if cell and not cell.get("bytes") and cell.get("path")]
        elif pa.types.is_string(cells.type) or pa.types.is_large_string(cells.type):
            paths = [path for path in cells.to_pylist() if path]
        else:
            continue
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError:  # unreadable: decoding will name it
                digest.update(f"{path}:missing".encode())
                continue
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class DecodedPairs(torch.utils.data.Dataset):
    r"""Map-style dataset of whole resized uint8 pairs and their crop windows, decoded once (see the module docstring).

    Each sample: ``input`` and ``target`` (H, W, 3) uint8 tensors (the target of the row's style), ``crop`` (3,) long
    ``(top, left, flip)``, and as in `PairedImageDataset` ``style`` (multi-style) and ``target_smoothed``
    (edge smoothing; an (R, R, 3) uint8 crop already). `collate_decoded_pairs` batches them. One difference: a
    multi-style row with any unreadable image is unreadable for every style (the per-sample path fails it only when
    it draws the broken style).

    Args:
        pairs (`PairedImageDataset`): the rows, columns, layout, seed, budget and edge smoothing of the training data;
            its ``transform`` (a `PairTransform`) gives the resize and the crops. Its epoch (`set_epoch`) is shared.
        cache_dir (`str`, *optional*): folder of the cache files (default: `default_cache_dir`).
        num_proc (`int`, *optional*): processes decoding while the cache is made (default: up to 8, one per core,
            from `PARALLEL_DECODE_MIN_ROWS` rows; else this one).
    """

    def __init__(
        self, pairs: PairedImageDataset, cache_dir: str | os.PathLike | None = None, num_proc: int | None = None
    ):
        if not isinstance(pairs.transform, PairTransform):
            raise ValueError(
                "`pairs.transform` must be a PairTransform (its resize is what the cache stores), got "
                f"{type(pairs.transform).__name__}."
            )
        if not isinstance(pairs.dataset, datasets.Dataset):
            raise ValueError(
                f"DecodedPairs needs a map-style `datasets.Dataset`, got {type(pairs.dataset).__name__}: a stream is "
                "decoded as it is read (StreamingPairedDataset)."
            )
        self.pairs = pairs
        self.cache_file = Path(cache_dir or default_cache_dir()) / f"decoded-{self.cache_key()}.arrow"
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        found = any(self.cache_file.parent.glob(f"{self.cache_file.stem}*.arrow"))  # one file, or one per process
        if num_proc is None and len(pairs.dataset) >= PARALLEL_DECODE_MIN_ROWS:
            num_proc = min(8, available_cores())
        self.table = pairs.dataset.map(
            self._decode_rows,
            batched=True,
            batch_size=16,
            remove_columns=pairs.dataset.column_names,
            features=FEATURES,
            num_proc=num_proc,
            cache_file_name=str(self.cache_file),
            new_fingerprint=self.cache_file.stem,
            desc="Decoding the training pairs once",
        )
        if not found:
            errors = [(i, e) for i, e in enumerate(self.table["error"]) if e]
            for index, error in errors[:10]:
                logger.warning(
                    "Unreadable row %d (%s): training reads a replacement whenever it is drawn", index, error
                )
            if len(errors) > 10:
                logger.warning("... and %d more unreadable rows.", len(errors) - 10)

    def cache_key(self) -> str:
        """Hash of the rows (fingerprint and referenced files) and of every setting that changes what is stored."""
        pairs, transform = self.pairs, self.pairs.transform
        settings = {
            "version": CACHE_VERSION,
            "rows": pairs.dataset._fingerprint,
            "files": referenced_files_digest(pairs.dataset, [pairs.input_column, *pairs.target_columns]),
            "columns": [pairs.input_column, pairs.target_columns, pairs.paired_layout, pairs.direction],
            "resize": [transform.resolution, transform.load_size],
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]

    def _decode_rows(self, rows: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in FEATURES}
        for offset in range(len(next(iter(rows.values())))):
            row = {column: values[offset] for column, values in rows.items()}
            try:
                values = self._decode(row)
            except ImageLoadError as error:
                values = {"input": b"", "targets": [], "height": 0, "width": 0, "brightness": 0.5, "error": str(error)}
            for name in FEATURES:
                out[name].append(values[name])
        return out

    def _decode(self, row: dict) -> dict:
        pairs = self.pairs
        photo, target = pairs.pair(row, style=0)
        source, target = pairs.transform.resize(photo, target)
        targets = [np.asarray(target).tobytes()]
        for column in pairs.target_columns[1:]:  # the other styles' targets, resized the same way
            targets.append(np.asarray(pairs.transform.resize(photo, decode_image(row[column]))[1]).tobytes())
        return {
            "input": np.asarray(source).tobytes(),  # (H, W, 3) uint8
            "targets": targets,
            "height": source.height,
            "width": source.width,
            "brightness": brightness(photo),
            "error": None,
        }

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's crops, flips and styles (in the DataLoader workers too)."""
        self.pairs.set_epoch(epoch)

    def brightness(self) -> list[float]:
        """Mean luma of every row's input photo (0.5 for unreadable rows), for `brightness_balanced_sampler`."""
        return [float(value) for value in self.table["brightness"]]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.pairs.read_replacing_unreadable(index, self.load)

    def load(self, index: int) -> dict[str, torch.Tensor]:
        """Row ``index``'s whole uint8 pair and crop window; `ImageLoadError` for a row that could not be decoded."""
        pairs, row = self.pairs, self.table[index]
        if row["error"]:
            raise ImageLoadError(row["error"])
        shape = (row["height"], row["width"], 3)
        style = pairs.style_of(index) if pairs.num_styles > 1 else 0
        left, top, flip = pairs.transform.crop_box((row["width"], row["height"]), pairs.crop_rng(index))
        item = {
            "input": torch.frombuffer(bytearray(row["input"]), dtype=torch.uint8).reshape(shape),
            "target": torch.frombuffer(bytearray(row["targets"][style]), dtype=torch.uint8).reshape(shape),
            "crop": torch.tensor([top, left, int(flip)]),
        }
        if pairs.edge_smoothing:  # from the crop, as the per-sample path makes it
            size = pairs.transform.resolution
            crop = item["target"][top : top + size, left : left + size].numpy()
            crop = np.ascontiguousarray(crop[:, ::-1] if flip else crop)
            item["target_smoothed"] = torch.from_numpy(edge_smooth(crop))
        if pairs.num_styles > 1:
            item["style"] = torch.tensor(style, dtype=torch.long)
        return item


def collate_decoded_pairs(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch `DecodedPairs` samples: ``input`` and ``target`` zero-padded to the largest (H, W) of the batch, (B, H,
    W, 3) uint8 (crop windows lie inside each image, so the padding is never read); the rest stacked. One thread: see
    `ghibligan.augment.one_thread`."""
    with one_thread():
        return _collate(items)


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    height = max(item["input"].shape[0] for item in items)
    width = max(item["input"].shape[1] for item in items)
    batch = {}
    for key in ("input", "target"):
        padded = torch.zeros((len(items), height, width, 3), dtype=torch.uint8)
        for slot, item in zip(padded, items, strict=True):
            slot[: item[key].shape[0], : item[key].shape[1]] = item[key]
        batch[key] = padded
    for key in items[0].keys() - {"input", "target"}:
        batch[key] = torch.stack([item[key] for item in items])
    return batch
