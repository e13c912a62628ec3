"""Paired data from photos: photo ──teacher──▶ (input_image, target_image) rows of a Hugging Face dataset.

The output folder is laid out as a Hub dataset repo: ``data/{split}-NNNNN.parquet`` shards with the images embedded,
and a dataset card (``README.md``). ``datasets.load_dataset(OUT)``, ``train_accelerate.py --train_data_dir OUT`` and,
after ``--push_to_hub``, ``--dataset_name ID`` all read it as is.

Runs resume: each shard is written atomically once complete, and a re-run skips every photo whose ``source`` key is
already in a shard, so an interrupted run of hours loses at most one shard of work.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from .image_io import IMAGE_EXTENSIONS, ImageLoadError, load_image, resize_to_max_side

FEATURES = datasets.Features(
    {
        "input_image": datasets.Image(),
        "target_image": datasets.Image(),
        "teacher": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "seed": datasets.Value("int64"),
        "source": datasets.Value("string"),
    }
)


@dataclass
class PairsReport:
    written: dict[str, int] = field(default_factory=dict)  # split → pairs written by this run
    already_done: int = 0
    failed: list[str] = field(default_factory=list)


def photos_from_folder(folder: str | os.PathLike, recursive: bool = True) -> Iterator[tuple[str, Path]]:
    """(key, path) for every image under ``folder``; the key is the path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"`folder` {str(folder)!r} is not a folder.")
    files = folder.rglob("*") if recursive else folder.glob("*")
    for path in sorted(f for f in files if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS):
        yield path.relative_to(folder).as_posix(), path


def photos_from_dataset(
    name: str, image_column: str = "image", split: str = "train", config_name: str | None = None
) -> Iterator[tuple[str, Image.Image]]:
    """(key, image) for every row of a Hub (or local) image dataset, streamed; the key is ``name/split/row``."""
    dataset = datasets.load_dataset(name, config_name, split=split, streaming=True)
    columns = list(dataset.features or {})
    if columns and image_column not in columns:
        raise ValueError(f"`image_column` {image_column!r} not in dataset columns {columns}.")
    for index, row in enumerate(dataset):
        yield f"{name}/{split}/{index}", row[image_column]


def split_of(key: str, validation_fraction: float) -> str:
    """Stable train/validation assignment by the photo's key (same answer in every run).

    SHA-256, not crc32: crc32 is linear, so similar keys (001.jpg, 002.jpg, ...) do not spread uniformly.
    """
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10_000
    return "validation" if bucket < validation_fraction * 10_000 else "train"


def done_sources(output_dir: Path) -> set[str]:
    """Photo keys already written to shards of ``output_dir``."""
    done: set[str] = set()
    for shard in sorted((output_dir / "data").glob("*.parquet")):
        done.update(pq.read_table(shard, columns=["source"]).column("source").to_pylist())
    return done


def _write_shard(rows: list[dict], output_dir: Path, split: str) -> None:
    data = output_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    index = len(list(data.glob(f"{split}-*.parquet")))
    final = data / f"{split}-{index:05d}.parquet"
    tmp = data / f".tmp-{final.name}"
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    datasets.Dataset.from_dict(columns, features=FEATURES).to_parquet(str(tmp))
    os.replace(tmp, final)  # a shard is either complete or absent


def make_pairs(
    photos: Iterable[tuple[str, object]],
    teacher,
    output_dir: str | os.PathLike,
    *,
    max_side: int | None = 1024,
    shard_size: int = 16,
    batch_size: int = 1,
    validation_fraction: float = 0.0,
    total: int | None = None,
) -> PairsReport:
    """Run ``teacher`` on every photo not yet done and append the pairs to ``output_dir``'s shards."""
    output_dir = Path(output_dir)
    done = done_sources(output_dir)
    report = PairsReport()
    pending: dict[str, list[dict]] = {"train": [], "validation": []}
    batch: list[tuple[str, Image.Image]] = []

    def flush_batch() -> None:
        outputs, seeds = teacher.generate([image for _, image in batch], [key for key, _ in batch])
        prompt = getattr(teacher, "prompt", None)
        for (key, image), target, seed in zip(batch, outputs, seeds, strict=True):
            split = split_of(key, validation_fraction)
            row = {"input_image": image, "target_image": target, "teacher": teacher.name}
            pending[split].append({**row, "prompt": prompt, "seed": seed, "source": key})
            if len(pending[split]) >= shard_size:
                _write_shard(pending[split], output_dir, split)
                report.written[split] = report.written.get(split, 0) + len(pending[split])
                pending[split] = []
        batch.clear()

    for key, photo in tqdm(photos, total=total, desc=f"make-pairs ({teacher.name})", unit="photo"):
        if key in done:
            report.already_done += 1
            continue
        try:
            image = resize_to_max_side(load_image(photo).rgb, max_side)
        except ImageLoadError as error:
            report.failed.append(str(error))
            continue
        batch.append((key, image))
        if len(batch) >= batch_size:
            flush_batch()
    if batch:
        flush_batch()
    for split, rows in pending.items():
        if rows:
            _write_shard(rows, output_dir, split)
            report.written[split] = report.written.get(split, 0) + len(rows)
    write_dataset_card(output_dir, teacher)
    return report


def write_dataset_card(output_dir: Path, teacher) -> None:
    """README.md with the Hub YAML header (splits, task) and what made the pairs."""
    counts = {}
    for shard in sorted((output_dir / "data").glob("*.parquet")):
        split = shard.name.split("-")[0]
        counts[split] = counts.get(split, 0) + pq.read_metadata(shard).num_rows
    configs = "\n".join(f"      - split: {split}\n        path: data/{split}-*" for split in sorted(counts))
    parameters = "\n".join(f"| `{key}` | `{value}` |" for key, value in teacher.describe().items())
    sizes = ", ".join(f"{split}: {count}" for split, count in sorted(counts.items()))
    (output_dir / "README.md").write_text(
        f"""---
task_categories:
  - image-to-image
tags:
  - ghibligan
  - paired
  - cartoonization
configs:
  - config_name: default
    data_files:
{configs}
---

# Paired photo → cartoon data made by `ghibligan make-pairs`

Each row pairs a photo (`input_image`) with its stylization by the teacher `{teacher.name}` (`target_image`), aligned
pixel for pixel, with `teacher`, `prompt`, `seed` and `source` (the photo's key) metadata. Rows: {sizes}.

## Teacher

| parameter | value |
| --- | --- |
{parameters}

## Train on it

```bash
accelerate launch train_accelerate.py --train_data_dir {output_dir.name} --output_dir model
```
"""
    )


def push_pairs_to_hub(output_dir: str | os.PathLike, repo_id: str, private: bool | None = None) -> str:
    """Upload the dataset folder as a Hub dataset repo; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(output_dir),
        allow_patterns=["data/*.parquet", "README.md"],
    )
    return str(commit)
