"""The steps' batches, in step order: made on the loop's thread as each step needs it, or ahead of it.

A batch depends only on its step's generator (:func:`step_generator`), never on the weights, so a thread
can make the next ones while the current step trains: the same batches, in the same order, as without it
(a test compares them). On CUDA the prefetched batches are pinned, so that their copies to the GPU
(``non_blocking``) overlap the step. ``--prefetch`` chooses (:func:`made_ahead`).

The thread makes its batches with one intra-op thread. With the default (one per core), its tensor operations
open a second OpenMP team in the process; libgomp, seeing more threads than cores, then lets every team's
threads wait by sleeping instead of spinning, and each of the thousands of small parallel regions of a training
step wakes a sleeping thread: about 3,000 context switches per step, and the shapes recipe trained at half speed
on 2 quiet cores (issue 33). On a busy machine the same sleeping is faster than spinning, which is why
``bench/trainer_throughput.py`` refuses to write its figures at a load above the core count.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import torch


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of one step's batch, timesteps and noise: a resumed run replays the same steps."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63))


def made_ahead(choice: str, device: torch.device, worth_it: bool) -> bool:
    """Whether ``--prefetch choice`` makes the batches ahead on a thread: never for a task whose batches are not
    worth it (its ``make_batch`` does no work of its own); ``auto``: on CUDA, where the step waits for the GPU and
    the copies overlap it, not on the CPU, where the thread competes with the step for the same cores and the
    synchronous loop was as fast or faster (docs/benchmarks.md, ``train_throughput``)."""
    if choice not in ("auto", "ahead", "sync"):
        raise ValueError(f"prefetch={choice!r}: choose auto, ahead or sync")
    return worth_it and (choice == "ahead" or choice == "auto" and device.type == "cuda")


def synchronous(make_batch: Callable, seed: int, rank: int, steps: range) -> Iterator:
    """``(step, batch)`` for each step, each batch made when the loop asks for it."""
    for step in steps:
        yield step, make_batch(step_generator(seed, step, rank))


class Prefetcher:
    """``(step, batch)`` for each step, made up to ``depth`` steps ahead on a background thread.

    An error while making a batch is raised in the loop at that step. :meth:`close` (or leaving the
    ``with`` block) stops the thread, also when the loop ends early. ``threads``: the thread's intra-op threads
    (``None``: torch's count, as before issue 33; ``bench/trainer_throughput.py`` measures both)."""

    _END = object()

    def __init__(
        self,
        make_batch: Callable,
        seed: int,
        rank: int,
        steps: range,
        depth: int = 2,
        pin: bool = False,
        threads: int | None = 1,
    ):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(make_batch, seed, rank, steps, pin, threads), name="trainer-batches", daemon=True
        )
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, make_batch, seed, rank, steps, pin, threads):
        before = torch.get_num_threads()
        if threads:  # 1: no second OpenMP team (see the module's docstring)
            torch.set_num_threads(threads)
        try:
            for step in steps:
                batch = make_batch(step_generator(seed, step, rank))
                if pin:
                    batch = batch.pin_memory()
                if not self._put((step, batch)):
                    return
        except BaseException as e:  # handed to the loop, which raises it at this step
            self._put((None, e))
            return
        finally:  # the count threads started later begin with (those started meanwhile: one, a small cost)
            if threads:
                torch.set_num_threads(before)
        self._put((None, self._END))

    def __iter__(self) -> Iterator:
        while True:
            step, item = self._queue.get()
            if step is None:
                if item is self._END:
                    return
                raise item
            yield step, item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
