"""Paired data from photos: photo ──teacher──▶ (input_image, target_image) rows of a Hugging Face dataset.

With several teachers, each row holds the photo and one target per teacher, in a column named after the teacher's style
(`style_name`: ``toon:ghibli`` → ``ghibli``), e.g. ``input_image, ghibli, toon, painterly``: one dataset to train a
multi-style generator (``train_accelerate.py --target_column ghibli toon painterly``).

The output folder is laid out as a Hub dataset repo: ``data/{split}-NNNNN.parquet`` shards with the images embedded,
and a dataset card (``README.md``). ``datasets.load_dataset(OUT)``, ``train_accelerate.py --train_data_dir OUT`` and,
after ``--push_to_hub``, ``--dataset_name ID`` all read it as is.

Runs resume: each shard is written to a hidden ``.tmp-`` name and renamed into place once complete, and a re-run skips
every photo whose ``source`` key is already in a shard, so an interrupted run of hours (Ctrl-C, ``kill -9``, a power
cut) loses at most one shard of work. A re-run deletes the temporary shards a killed run left behind: their photos are
redone. Arguments are checked before any teacher work (`check_make_pairs_args`). One run per folder at a time.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from .image_io import IMAGE_EXTENSIONS, ImageLoadError, load_image, resize_to_max_side
from .photo_variants import PhotoVariation, stable_hash, variant_key, variant_seed, vary_photo

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


METADATA_FEATURES = {name: FEATURES[name] for name in ("teacher", "prompt", "seed", "source")}


def style_name(teacher) -> str:
    """The column and style name of a teacher's targets: its ``--teacher`` value after the kind, last path part
    (``toon:ghibli`` → ``ghibli``, ``diffusers:you/ghibli-sd`` → ``ghibli-sd``, ``toon`` → ``toon``)."""
    kind, _, argument = teacher.name.partition(":")
    return (argument or kind).rstrip("/").rsplit("/", 1)[-1]


def pair_features(teachers: list) -> datasets.Features:
    """The columns `make_pairs` writes: ``input_image, target_image`` for one teacher, ``input_image`` and one image
    column per teacher's `style_name` for several; then ``teacher, prompt, seed, source``.

    Raises:
        ValueError: two teachers share a style name, or a style name is a reserved column.
    """
    if len(teachers) == 1:
        return FEATURES
    names = [style_name(teacher) for teacher in teachers]
    clashes = sorted({name for name in names if names.count(name) > 1 or name in FEATURES})
    if clashes:
        raise ValueError(
            f"`teacher`s {[t.name for t in teachers]} give the target columns {names}: {clashes} repeat or clash with "
            f"{list(FEATURES)}. Give each teacher once."
        )
    images = {"input_image": datasets.Image(), **{name: datasets.Image() for name in names}}
    return datasets.Features({**images, **METADATA_FEATURES})


SHARD_NAME = re.compile(r"(?P<split>[A-Za-z0-9_]+)-(?P<index>\d+)\.parquet")  # train-00000.parquet, never .tmp-*
TEMPORARY_PREFIX = ".tmp-"


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
    """Stable train/validation assignment by the photo's key (same answer in every run: `stable_hash`)."""
    bucket = stable_hash(key) % 10_000
    return "validation" if bucket < validation_fraction * 10_000 else "train"


def shards(output_dir: str | os.PathLike, split: str | None = None) -> list[Path]:
    """The complete shards of ``output_dir`` (``data/{split}-NNNNN.parquet``), sorted; temporary ones never count."""
    data = Path(output_dir) / "data"
    if not data.is_dir():
        return []
    return sorted(
        path
        for path in data.iterdir()
        if (match := SHARD_NAME.fullmatch(path.name)) and split in (None, match["split"]) and path.is_file()
    )


def remove_temporary_shards(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``data/.tmp-*`` files that a killed run left behind (complete or not); returns what was removed."""
    data = Path(output_dir) / "data"
    leftovers = sorted(data.glob(f"{TEMPORARY_PREFIX}*")) if data.is_dir() else []
    for path in leftovers:
        path.unlink()
    return leftovers


def done_sources(output_dir: str | os.PathLike) -> set[str]:
    """Photo keys already written to complete shards of ``output_dir``.

    Raises:
        ValueError: a shard cannot be read; the message names it.
    """
    done: set[str] = set()
    for shard in shards(output_dir):
        try:
            done.update(pq.read_table(shard, columns=["source"]).column("source").to_pylist())
        except (OSError, KeyError, pa.ArrowException) as error:
            raise ValueError(
                f"Shard {str(shard)!r} of `output_dir` cannot be read ({error}). Delete it and re-run: its photos "
                "will be redone."
            ) from error
    return done


def check_make_pairs_args(
    output_dir: str | os.PathLike,
    *,
    max_side: int | None = 1024,
    shard_size: int = 16,
    batch_size: int = 1,
    validation_fraction: float = 0.0,
    photo_variants: int = 0,
) -> Path:
    """Check `make_pairs`' arguments before any teacher work (creating nothing); returns ``output_dir`` as a `Path`.

    Raises:
        ValueError: an argument is out of range, or ``output_dir`` cannot hold a dataset; the message names it.
    """
    sizes = {"shard_size": shard_size, "batch_size": batch_size}
    if max_side is not None:
        sizes["max_side"] = max_side  # None keeps the photos' size; 0 would make 1x1 pairs
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a whole number >= 1, got {value!r}.")
    if isinstance(photo_variants, bool) or not isinstance(photo_variants, int) or not 0 <= photo_variants <= 64:
        raise ValueError(f"`photo_variants` must be a whole number in [0, 64], got {photo_variants!r}.")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1) (0.1 holds out 10 % of the photos), got {validation_fraction!r}."
        )
    output_dir = Path(output_dir)
    for folder in (output_dir, output_dir / "data"):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"`output_dir` {str(output_dir)!r} cannot hold a dataset: {str(folder)!r} is a file.")
    candidates = (output_dir.absolute() / "data", output_dir.absolute(), *output_dir.absolute().parents)
    existing = next(folder for folder in candidates if folder.exists())  # what the run will write into, or create in
    if not existing.is_dir():
        raise ValueError(f"`output_dir` {str(output_dir)!r} cannot be created: {str(existing)!r} is a file.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=TEMPORARY_PREFIX):
            pass  # a real write: os.access says yes to root on a read-only mount
    except OSError as error:
        raise ValueError(f"`output_dir` {str(output_dir)!r} is not writable ({error}).") from error
    return output_dir


def check_shard_columns(output_dir: Path, features: datasets.Features) -> None:
    """Raise if ``output_dir`` already holds shards with other columns (a resumed run must use the same teachers)."""
    existing = shards(output_dir)
    if existing:
        try:
            columns = pq.read_schema(existing[0]).names
        except (OSError, pa.ArrowException) as error:
            raise ValueError(
                f"Shard {str(existing[0])!r} of `output_dir` cannot be read ({error}). Delete it and re-run: its "
                "photos will be redone."
            ) from error
        if set(columns) != set(features):
            raise ValueError(
                f"`output_dir` {str(output_dir)!r} holds pairs with the columns {columns}, not {list(features)}: "
                "re-run with the teachers that made them, or use another `output_dir`."
            )


def _write_shard(rows: list[dict], output_dir: Path, split: str, features: datasets.Features = FEATURES) -> None:
    data = output_dir / "data"
    index = max((int(SHARD_NAME.fullmatch(path.name)["index"]) for path in shards(output_dir, split)), default=-1) + 1
    final = data / f"{split}-{index:05d}.parquet"
    tmp = data / f"{TEMPORARY_PREFIX}{final.name}"
    columns = {name: [row[name] for row in rows] for name in features}
    try:
        datasets.Dataset.from_dict(columns, features=features).to_parquet(str(tmp))
        os.replace(tmp, final)  # a shard is either complete or absent
    finally:
        tmp.unlink(missing_ok=True)  # after an error or Ctrl-C; a kill -9 leaves it to the next run's cleanup


def make_pairs(
    photos: Iterable[tuple[str, object]],
    teacher: object | Sequence[object],
    output_dir: str | os.PathLike,
    *,
    max_side: int | None = 1024,
    shard_size: int = 16,
    batch_size: int = 1,
    validation_fraction: float = 0.0,
    total: int | None = None,
    photo_variants: int = 0,
    variation: PhotoVariation | None = None,
) -> PairsReport:
    """Run ``teacher`` on every photo not yet done and append the pairs to ``output_dir``'s shards.

    ``teacher`` may be a list: every photo then gets one target per teacher, in columns named by `style_name`
    (`pair_features`); ``teacher`` holds their names joined by commas, ``prompt`` and ``seed`` the first teacher's.

    ``photo_variants`` adds that many photometric variants of every *training* photo (`ghibligan.photo_variants`:
    exposure, white balance, haze, noise, JPEG drawn within ``variation``), each run through the teachers as a photo of
    its own, under the key ``{key}#variant{i}``. Held-out photos get none, so validation stays the photos as they are.

    Arguments are checked (`check_make_pairs_args`) and leftovers of a killed run removed before any teacher work.
    """
    output_dir = check_make_pairs_args(
        output_dir,
        max_side=max_side,
        shard_size=shard_size,
        batch_size=batch_size,
        validation_fraction=validation_fraction,
        photo_variants=photo_variants,
    )
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if not teachers:
        raise ValueError("`teacher` is an empty list: give at least one teacher.")
    features = pair_features(teachers)
    check_shard_columns(output_dir, features)
    (output_dir / "data").mkdir(parents=True, exist_ok=True)
    remove_temporary_shards(output_dir)
    done = done_sources(output_dir)
    report = PairsReport()
    pending: dict[str, list[dict]] = {"train": [], "validation": []}
    batch: list[tuple[str, Image.Image, str]] = []  # (key, photo, split)

    def flush_batch() -> None:
        images, keys = [image for _, image, _ in batch], [key for key, _, _ in batch]
        results = [teacher.generate(images, keys) for teacher in teachers]  # [(outputs, seeds)] per teacher
        target_columns = [name for name in features if name not in METADATA_FEATURES and name != "input_image"]
        prompt = getattr(teachers[0], "prompt", None)
        for index, (key, image, split) in enumerate(batch):
            row = {"input_image": image, "teacher": names}
            row.update({column: outputs[index] for column, (outputs, _) in zip(target_columns, results, strict=True)})
            pending[split].append({**row, "prompt": prompt, "seed": results[0][1][index], "source": key})
            if len(pending[split]) >= shard_size:
                _write_shard(pending[split], output_dir, split, features)
                report.written[split] = report.written.get(split, 0) + len(pending[split])
                pending[split] = []
        batch.clear()

    names = ",".join(teacher.name for teacher in teachers)
    for key, photo in tqdm(photos, total=total, desc=f"make-pairs ({names})", unit="photo"):
        split = split_of(key, validation_fraction)
        variants = range(photo_variants if split == "train" else 0)
        keys = [(None, key), *((index, variant_key(key, index)) for index in variants)]  # (variant index, pair key)
        todo = [(index, pair_key) for index, pair_key in keys if pair_key not in done]
        report.already_done += 1 + len(variants) - len(todo)
        if not todo:
            continue
        try:
            image = resize_to_max_side(load_image(photo).rgb, max_side)
        except ImageLoadError as error:
            report.failed.append(str(error))
            continue
        for index, pair_key in todo:
            varied = image if index is None else vary_photo(image, variant_seed(key, index), variation)
            batch.append((pair_key, varied, split))
            if len(batch) >= batch_size:
                flush_batch()
    if batch:
        flush_batch()
    for split, rows in pending.items():
        if rows:
            _write_shard(rows, output_dir, split, features)
            report.written[split] = report.written.get(split, 0) + len(rows)
    write_dataset_card(output_dir, teachers)
    return report


def write_dataset_card(output_dir: Path, teachers: list) -> None:
    """README.md with the Hub YAML header (splits, task) and what made the pairs."""
    counts = {}
    for shard in shards(output_dir):
        split = SHARD_NAME.fullmatch(shard.name)["split"]
        counts[split] = counts.get(split, 0) + pq.read_metadata(shard).num_rows
    configs = "\n".join(f"      - split: {split}\n        path: data/{split}-*" for split in sorted(counts))
    if len(teachers) == 1:
        columns = f"its stylization by the teacher `{teachers[0].name}` (`target_image`)"
    else:
        columns = "its stylizations by " + ", ".join(f"`{t.name}` (`{style_name(t)}`)" for t in teachers)
    parameters = "\n\n".join(
        "| parameter | value |\n| --- | --- |\n" + "\n".join(f"| `{k}` | `{v}` |" for k, v in t.describe().items())
        for t in teachers
    )
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

Each row pairs a photo (`input_image`) with {columns}, aligned pixel for pixel, with `teacher`, `prompt`, `seed` and
`source` (the photo's key) metadata. Rows: {sizes}.

## Teacher

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
