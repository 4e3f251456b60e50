"""The trainer's pieces that need no model: the batch pipeline (prefetched = synchronous, errors and early
stops, ``--prefetch``'s choice, the thread's intra-op threads) and the task base class's eval swap."""

import threading

import pytest
import torch
from torch import nn

from trainer.batches import Prefetcher, made_ahead, step_generator, synchronous
from trainer.task import Task


def noisy_batch(gen: torch.Generator) -> dict:
    """A batch like the shapes world's: integers and floats drawn from the step's generator, some slow steps."""
    n = int(torch.randint(1, 5, (1,), generator=gen))
    return {"ids": torch.randint(49408, (n, 77), generator=gen), "eps": torch.randn(n, 3, 4, 4, generator=gen)}


def test_prefetched_batches_are_the_synchronous_ones():
    """Same seed and steps (also a resumed range): the same steps in order, the same tensors, bit for bit
    (CPU-made batches; nothing device-dependent)."""
    steps = range(3, 11)
    expected = list(synchronous(noisy_batch, 7, 1, steps))
    with Prefetcher(noisy_batch, 7, 1, steps, depth=3) as pre:
        got = list(pre)
    assert [s for s, _ in got] == list(steps) == [s for s, _ in expected]
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["eps"], b["eps"])
    # and the step generator is what makes them: another seed or rank gives other batches
    other = noisy_batch(step_generator(7, 3, 0))["eps"]
    assert other.shape != expected[0][1]["eps"].shape or not torch.equal(other, expected[0][1]["eps"])


def test_prefetch_error_reaches_the_loop_at_its_step():
    def make(gen):
        if int(torch.randint(1000, (1,), generator=gen)) == int(
            torch.randint(1000, (1,), generator=step_generator(0, 4, 0))
        ):
            raise OSError("cannot render step 4")
        return torch.zeros(1)

    seen = []
    with pytest.raises(OSError, match="step 4"), Prefetcher(make, 0, 0, range(10)) as pre:
        for step, _ in pre:
            seen.append(step)
    assert seen == [0, 1, 2, 3]


def test_prefetch_stops_when_the_loop_stops_early():
    """A loop that ends early (an error in the step) leaves no thread behind, though the queue is full."""
    before = threading.active_count()
    with Prefetcher(noisy_batch, 0, 0, range(1000), depth=2) as pre:
        for step, _ in pre:
            if step == 2:
                break
    assert threading.active_count() == before


def test_prefetch_choice():
    """auto: ahead on CUDA only (on the CPU the thread shares the step's cores and gains nothing, issue 33); never
    for a task whose batches are no work of their own; anything else is refused."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert made_ahead("auto", cuda, True) and not made_ahead("auto", cpu, True)
    assert made_ahead("ahead", cpu, True) and made_ahead("ahead", cuda, True)
    assert not made_ahead("sync", cuda, True)
    assert not any(made_ahead(c, d, False) for c in ("auto", "ahead", "sync") for d in (cpu, cuda))
    with pytest.raises(ValueError, match="auto, ahead or sync"):
        made_ahead("always", cpu, True)


def test_the_batch_thread_opens_no_second_openmp_team():
    """The batches are made with one intra-op thread (a second OpenMP team made every step's parallel regions wake
    sleeping threads: 2x slower training on 2 cores, issue 33), torch's default on request; the loop's threads
    and those of threads started afterwards keep torch's count."""
    threads = torch.get_num_threads()
    seen = {}

    def make(gen):
        seen[threading.current_thread().name] = torch.get_num_threads()
        return noisy_batch(gen)

    for options, expected in (({}, 1), ({"threads": None}, threads)):
        seen.clear()
        with Prefetcher(make, 0, 0, range(3), **options) as pre:
            list(pre)
        assert seen == {"trainer-batches": expected}
    assert torch.get_num_threads() == threads
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [threads]


class Toy(Task):
    def __init__(self):
        super().__init__(cfg=None, device=torch.device("cpu"))
        self.inner = nn.Dropout(0.5)
        self.trainable = nn.ModuleDict({"inner": nn.Linear(2, 2), "frozen": nn.Linear(2, 1).requires_grad_(False)})


def test_task_eval_swap_restores_the_mode_also_on_error():
    task = Toy().train()
    with task.evaluating():
        assert not task.training and not task.inner.training
    assert task.training and task.inner.training
    with pytest.raises(RuntimeError), task.evaluating(task.inner):
        assert task.training and not task.inner.training
        raise RuntimeError("preview failed")
    assert task.inner.training
    task.eval()
    with task.evaluating():
        pass
    assert not task.training  # a task in eval mode stays there
    assert set(task.trained_parameters()) == {"inner.weight", "inner.bias"}
