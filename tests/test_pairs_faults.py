"""make-pairs under faults: kill -9 mid-shard then re-run, leftovers of killed runs, bad arguments, damaged shards."""

import signal
import subprocess
import sys

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ghibligan.cli import main
from ghibligan.pairs import done_sources, make_pairs, photos_from_folder, shards
from ghibligan.teachers import ToonTeacher

from .helpers import default_ctrl_c, photo_like

# Runs `ghibligan make-pairs ARGS` and sends itself SIGNAL at the 2nd shard: in "partial" mode while the parquet file
# is being closed (no footer yet), in "complete" mode just before the finished temporary shard is renamed into place.
KILLED_RUN = """
import os, signal, sys
import pyarrow.parquet as pq
from ghibligan.cli import main

mode, signal_name, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
shards_started = 0

def die():
    os.kill(os.getpid(), getattr(signal, signal_name))

if mode == "partial":
    close = pq.ParquetWriter.close
    def close_then_die(self, *args, **kwargs):
        global shards_started
        shards_started += 1
        if shards_started == 2:
            die()
        return close(self, *args, **kwargs)
    pq.ParquetWriter.close = close_then_die
else:
    replace = os.replace
    def replace_then_die(src, dst, *args, **kwargs):
        global shards_started
        if os.path.basename(src).startswith(".tmp-train-"):
            shards_started += 1
            if shards_started == 2:
                die()
        return replace(src, dst, *args, **kwargs)
    os.replace = replace_then_die
sys.exit(main(argv))
"""


def make_photos(folder, count):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(photo_like(64, 48, seed=i)).save(folder / f"p{i:02d}.png")
    return folder


class RecordingTeacher:
    """The toon teacher, recording which photos it was asked to stylize."""

    def __init__(self):
        self.teacher, self.calls = ToonTeacher("toon"), []
        self.name, self.describe = self.teacher.name, self.teacher.describe

    def generate(self, images, keys):
        self.calls.extend(keys)
        return self.teacher.generate(images, keys)


@pytest.mark.parametrize("mode", ["partial", "complete"])
def test_kill_9_during_a_shard_write_then_rerun_completes(tmp_path, mode):
    photos = make_photos(tmp_path / "photos", 7)
    out = tmp_path / f"pairs-{mode}-{tmp_path.name}"  # a unique name: datasets caches load_dataset(folder) by name
    argv = ["make-pairs", "--photos", str(photos), "--teacher", "toon", "--output_dir", str(out), "--shard_size", "2"]
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, mode, "SIGKILL", *argv], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    leftovers = list((out / "data").glob(".tmp-*"))
    assert [path.name for path in leftovers] == [".tmp-train-00001.parquet"]
    if mode == "complete":  # the worst case: a readable shard whose rows must still not count as done
        assert pq.read_metadata(leftovers[0]).num_rows == 2
    assert len(done_sources(out)) == 2  # only the first shard made it

    assert main(argv) == 0
    assert not list((out / "data").glob(".tmp-*"))
    loaded = datasets.load_dataset(str(out))  # through the dataset card's splits
    assert list(loaded) == ["train"]
    assert sorted(loaded["train"]["source"]) == [f"p{i:02d}.png" for i in range(7)]  # every photo exactly once
    assert ".tmp" not in (out / "README.md").read_text()


def test_ctrl_c_during_a_shard_write_leaves_no_temporary_shard(tmp_path):
    photos = make_photos(tmp_path / "photos", 5)
    out = tmp_path / "pairs"
    argv = ["make-pairs", "--photos", str(photos), "--teacher", "toon", "--output_dir", str(out), "--shard_size", "2"]
    interrupted = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, "partial", "SIGINT", *argv], capture_output=True, preexec_fn=default_ctrl_c
    )
    assert interrupted.returncode == 130
    assert not list((out / "data").glob(".tmp-*"))
    assert [path.name for path in shards(out)] == ["train-00000.parquet"]


def test_rerun_redoes_only_the_photos_of_leftover_temporary_shards(tmp_path):
    photos = list(photos_from_folder(make_photos(tmp_path / "photos", 5)))
    out = tmp_path / "pairs"
    make_pairs(photos[:4], ToonTeacher("toon"), out, shard_size=2)
    (out / "data" / "train-00001.parquet").rename(out / "data" / ".tmp-train-00001.parquet")  # what a kill leaves
    teacher = RecordingTeacher()
    report = make_pairs(photos, teacher, out, shard_size=2)
    assert sorted(teacher.calls) == ["p02.png", "p03.png", "p04.png"]
    assert report.already_done == 2 and report.written == {"train": 3}
    assert sorted(done_sources(out)) == [key for key, _ in photos]
    assert [path.name for path in shards(out)] == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]


def test_a_missing_shard_in_the_middle_is_never_overwritten(tmp_path):
    photos = list(photos_from_folder(make_photos(tmp_path / "photos", 5)))
    out = tmp_path / "pairs"
    make_pairs(photos[:3], ToonTeacher("toon"), out, shard_size=1)
    (out / "data" / "train-00001.parquet").unlink()  # its photo is redone; train-00002 must survive
    make_pairs(photos, ToonTeacher("toon"), out, shard_size=1)
    assert [path.name for path in shards(out)] == [f"train-{i:05d}.parquet" for i in (0, 2, 3, 4, 5)]
    rows = sum(pq.read_metadata(path).num_rows for path in shards(out))
    assert rows == 5 and sorted(done_sources(out)) == [key for key, _ in photos]


@pytest.mark.parametrize(
    "name, value",
    [("max_side", 0), ("max_side", -5), ("shard_size", 0), ("batch_size", 0), ("validation_fraction", 1.0)],
)
def test_bad_arguments_are_refused_before_any_teacher_work(tmp_path, name, value):
    photos = list(photos_from_folder(make_photos(tmp_path / "photos", 2)))
    teacher = RecordingTeacher()
    with pytest.raises(ValueError, match=name):
        make_pairs(photos, teacher, tmp_path / "pairs", **{name: value})
    assert teacher.calls == []
    assert not (tmp_path / "pairs").exists()


@pytest.mark.parametrize("where", ["output_dir", "parent", "data"])
def test_an_output_dir_that_cannot_be_a_folder_is_refused_before_any_teacher_work(tmp_path, where):
    photos = list(photos_from_folder(make_photos(tmp_path / "photos", 2)))
    blocker = {"output_dir": tmp_path / "pairs", "parent": tmp_path / "parent", "data": tmp_path / "pairs" / "data"}
    blocker[where].parent.mkdir(parents=True, exist_ok=True)
    blocker[where].write_text("a file in the way")
    out = tmp_path / "parent" / "pairs" if where == "parent" else tmp_path / "pairs"
    teacher = RecordingTeacher()
    with pytest.raises(ValueError, match="output_dir"):
        make_pairs(photos, teacher, out)
    assert teacher.calls == []
    assert blocker[where].read_text() == "a file in the way"


def test_cli_refuses_bad_arguments_and_teachers_with_exit_code_2(tmp_path, capsys):
    photos = str(make_photos(tmp_path / "photos", 2))
    (tmp_path / "file").write_text("not a folder")
    base = ["make-pairs", "--photos", photos, "--output_dir"]
    assert main([*base, str(tmp_path / "a"), "--max_side", "0"]) == 2
    assert main([*base, str(tmp_path / "file")]) == 2
    assert main([*base, str(tmp_path / "b"), "--teacher", "diffusers:/nonexistent"]) == 2
    assert main([*base, str(tmp_path / "c"), "--teacher", f"diffusers:{tmp_path / 'file'}"]) == 2
    assert (tmp_path / "file").read_text() == "not a folder"
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing created for a refused run
    assert capsys.readouterr().err.count("ghibligan: error:") == 4


def test_a_damaged_shard_is_named_not_a_parquet_traceback(tmp_path, capsys):
    photos = make_photos(tmp_path / "photos", 2)
    out = tmp_path / "pairs"
    (out / "data").mkdir(parents=True)
    (out / "data" / "train-00000.parquet").write_bytes(b"PAR1 then the disk died")
    assert main(["make-pairs", "--photos", str(photos), "--output_dir", str(out)]) == 2
    assert "train-00000.parquet" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"train-00000\.parquet"):
        done_sources(out)


def test_a_read_only_output_dir_is_refused_before_any_teacher_work(tmp_path):
    from .test_cartoonize_faults import can_mount_read_only, run_with_read_only

    if not can_mount_read_only(tmp_path):
        pytest.skip("needs unshare --mount (root or user namespaces) for a real read-only mount")
    photos = make_photos(tmp_path / "photos", 2)
    (tmp_path / "pairs").mkdir()
    argv = ["make-pairs", "--photos", str(photos), "--output_dir", str(tmp_path / "pairs")]
    assert run_with_read_only(tmp_path / "pairs", argv).returncode == 2
    assert list((tmp_path / "pairs").iterdir()) == []
