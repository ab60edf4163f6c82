"""Progress of the core's long phases (sampling, frozen predictions, the job's steps), for any host.

The core calls `report(desc, done, total)` as it works: at every DDIM step of its sampling, at every
batch of frozen-model predictions, and at each phase of a job. A host shows it by listening:

    with listen(lambda desc, done, total: bar.update(desc, done, total)):
        run_erasure(...)

The listeners live in a context variable, so a report reaches only the listeners of the thread (or
task) that runs the work, and nothing is printed when nobody listens. A listener may raise
`ErasureCancelled` to stop the work where it reports (so Cancel also works before training starts).
Training steps keep their own callback, `progress(step, total, loss)` (erasure_core.training).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

Listener = Callable[[str, int, int], None]  # (what is being done, units done, units in all)

_listeners: ContextVar[tuple[Listener, ...]] = ContextVar("erasure_core_progress_listeners", default=())


def report(desc: str, done: int, total: int) -> None:
    """Tell every listener of this context that `done` of `total` units of `desc` are finished."""
    for listener in _listeners.get():
        listener(desc, done, total)


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Call `listener(desc, done, total)` for every report made inside the block (in this context)."""
    token = _listeners.set(_listeners.get() + (listener,))
    try:
        yield
    finally:
        _listeners.reset(token)
