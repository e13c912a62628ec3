"""Overlap I/O with compute: run a function over items in background threads, a bounded number ahead, in order.

`ghibligan cartoonize` decodes the next photos and encodes the previous cartoons while the generator runs, so the
accelerator is not left waiting for Pillow or OpenCV (which release the GIL while they work).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def _run_now(fn: Callable[[Item], Result], item: Item) -> Future:
    future: Future = Future()
    try:
        future.set_result(fn(item))
    except Exception as error:  # handed to the caller through the future, as a pool would
        future.set_exception(error)
    return future


def map_ahead(
    fn: Callable[[Item], Result], items: Iterable[Item], executor: Executor | None, lookahead: int
) -> Iterator[tuple[Item, Future]]:
    """``(item, future of fn(item))`` in the order of ``items``, with up to ``lookahead`` calls submitted to
    ``executor`` ahead of the one yielded; ``executor=None`` runs each call when its turn comes (no threads).

    An exception of ``fn`` is raised by that item's ``future.result()``, so the caller can report it and go on.
    """
    if lookahead < 1:
        raise ValueError(f"`lookahead` must be >= 1, got {lookahead!r}.")
    if executor is None:
        for item in items:
            yield item, _run_now(fn, item)
        return
    queued: deque[tuple[Item, Future]] = deque()
    iterator = iter(items)
    try:
        for item in iterator:
            queued.append((item, executor.submit(fn, item)))
            if len(queued) > lookahead:
                yield queued.popleft()
        while queued:
            yield queued.popleft()
    finally:  # closed early (an error, Ctrl-C): don't start what nobody will read
        for _, future in queued:
            future.cancel()
