"""`cartoonize_files` with background decoding / encoding threads and batches across files writes what the
one-file-at-a-time run wrote."""

import cv2
import numpy as np
import pytest
from PIL import Image

from ghibligan.background import map_ahead
from ghibligan.cartoonize import cartoonize_files, plan_jobs
from ghibligan.pipeline import Cartoonizer

from .helpers import photo_like, save_tiny_unet, write_broken_files, write_video


@pytest.fixture(scope="module")
def cartoonizer(tmp_path_factory):
    pipe = Cartoonizer.from_pretrained(save_tiny_unet(tmp_path_factory.mktemp("model") / "ckpt"), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(cartoonizer, inputs, output, **kwargs):
    jobs, problems = plan_jobs([str(inputs)], output)
    assert not problems
    return cartoonize_files(cartoonizer, jobs, **kwargs)


def test_threads_and_batches_write_the_same_files_as_one_at_a_time(tmp_path, cartoonizer):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(7):  # two sizes, interleaved, so batches mix them
        size = (64, 48) if i % 2 else (50, 70)
        Image.fromarray(photo_like(*size, seed=i)).save(photos / f"p{i}.png")
    Image.fromarray(np.dstack([photo_like(40, 40), np.full((40, 40), 128, np.uint8)]), "RGBA").save(photos / "a.png")
    broken = write_broken_files(photos)

    before = run(cartoonizer, photos, tmp_path / "before", batch_size=1, num_workers=0)
    after = run(cartoonizer, photos, tmp_path / "after", batch_size=3, num_workers=2)

    assert len(before.written) == 8 and len(before.failed) == len(broken)
    assert [path.name for path in after.written] == [path.name for path in before.written]
    assert sorted(message.split(":")[0] for message in after.failed) == sorted(str(path) for path in broken)
    for old, new in zip(before.written, after.written, strict=True):
        old_image, new_image = Image.open(old), Image.open(new)
        assert new_image.mode == old_image.mode and new_image.size == old_image.size
        assert np.abs(np.asarray(old_image, dtype=np.int16) - np.asarray(new_image, dtype=np.int16)).max() <= 1
    assert not list(tmp_path.rglob(".tmp-*"))


def test_threaded_video_has_the_same_frames(tmp_path, cartoonizer):
    source = write_video(tmp_path / "clip.avi", frames=9, fourcc="MJPG")

    def frames(path):
        capture, found = cv2.VideoCapture(str(path)), []
        while (read := capture.read())[0]:
            found.append(read[1])
        capture.release()
        return found

    jobs = [plan_jobs([str(source)], tmp_path / name)[0][0] for name in ("before", "after")]
    for job, workers in zip(jobs, (0, 2), strict=True):
        assert cartoonize_files(cartoonizer, [job], batch_size=4, num_workers=workers).ok
    before, after = frames(jobs[0].target), frames(jobs[1].target)
    assert len(before) == len(after) == 9
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_map_ahead_keeps_order_and_hands_errors_to_their_item():
    from concurrent.futures import ThreadPoolExecutor

    def invert(x):
        if x == 3:
            raise ValueError("three")
        return 1 / x

    with ThreadPoolExecutor(2) as pool:
        for executor in (pool, None):
            results = list(map_ahead(invert, [1, 2, 3, 4], executor, lookahead=2))
            assert [item for item, _ in results] == [1, 2, 3, 4]
            assert [results[i][1].result() for i in (0, 1, 3)] == [1.0, 0.5, 0.25]
            with pytest.raises(ValueError, match="three"):
                results[2][1].result()


def test_a_negative_worker_count_is_refused(cartoonizer):
    with pytest.raises(ValueError, match=r"`num_workers` must be an integer >= 0 .* got -1"):
        cartoonize_files(cartoonizer, [], num_workers=-1)
