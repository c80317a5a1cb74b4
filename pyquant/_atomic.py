"""Atomic file output: write to a temporary file beside the destination,
rename it over the destination only when everything succeeded."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from .errors import CheckpointError


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary path in ``dst``'s directory. On success it replaces
    ``dst``; on any exception it is removed and ``dst`` is left as it was.
    An existing ``dst`` is an error unless ``overwrite``."""
    dst = os.fspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise CheckpointError(f"{dst}: output already exists (use --force / force=True to replace it)")
    directory = os.path.dirname(os.path.abspath(dst))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pyquant-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CheckpointError(f"{dst}: cannot write in {directory}: {exc.strerror}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
