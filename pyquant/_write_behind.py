"""Writing on a background thread while the caller computes what comes next.

A quantized GGUF tensor is made chunk by chunk of rows into a few reused
buffers; each filled chunk is queued here and written by one thread, in
queue order, while the caller's native call (GIL released) quantizes the
next chunk. Writes (and the page-cache and journal waits behind them) then
overlap the kernels instead of following them, and the output is never
more than a few chunks in memory.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import numpy as np

_Write = Callable[[Any], None]


class WriteBehind:
    """``buffer()`` hands out one of ``count`` byte buffers of ``size`` bytes
    (waiting until the thread has written one); ``write(fn, data)`` queues
    ``fn(data)``. A buffer given to ``write`` is reused once written. An
    error raised by a write is raised again by the next ``buffer()`` /
    ``write()`` / the end of the ``with`` block; after an error (or when the
    block is left by an exception) the queued writes are dropped."""

    def __init__(self, size: int, count: int = 3):
        self.size = size
        self._free: queue.SimpleQueue[np.ndarray[Any, Any]] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(np.empty(size, np.uint8))
        self._todo: queue.SimpleQueue[tuple[_Write, Any, np.ndarray[Any, Any] | None] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="pyquant-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            fn, data, buf = item
            if self._error is None and not self._stop:
                try:
                    fn(data)
                except BaseException as exc:  # raised again in the caller's thread
                    self._error = exc
            del data
            if buf is not None:
                self._free.put(buf)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def buffer(self) -> np.ndarray[Any, Any]:
        self._check()
        buf = self._free.get()
        self._check()
        return buf

    def write(self, fn: _Write, data: Any, buffer: np.ndarray[Any, Any] | None = None) -> None:
        """Queues ``fn(data)``; ``buffer`` (if ``data`` views one from :meth:`buffer`) is reused after."""
        self._check()
        self._todo.put((fn, data, buffer))

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop = exc_type is not None
        self._todo.put(None)
        self._thread.join()
        if exc_type is None:
            self._check()

