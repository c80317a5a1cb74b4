"""Atomic file output: write to a temporary file beside the destination and
publish it as the destination only when everything succeeded.

- The temporary file cannot outlive the process where the OS allows: on
  Linux it is an unnamed ``O_TMPFILE`` file, linked into the directory only
  when complete, so even SIGKILL leaves nothing. Elsewhere it is named
  ``.pyquant-<host>-<pid>-<random>.tmp`` and each run removes the ones of
  dead processes of this host.
- Without ``force`` it is published with a primitive that fails if the
  destination exists (``link``, or ``renameat2(RENAME_NOREPLACE)``), so two
  runs racing for one new path cannot replace each other, and a dangling
  symlink at the destination counts as existing.
- A new file's mode follows the umask; a replaced file keeps its mode.
- The destination must not be one of the inputs (same device and inode:
  hard links and symlinks included), with or without ``force``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import socket
import stat
import tempfile
from typing import Iterable, Iterator, Sequence

from .errors import CheckpointError

_PROC_FD = "/proc/self/fd"
# errno values meaning "this OS or file system has no O_TMPFILE" (EISDIR:
# kernels that ignore the flag and see a directory opened for writing).
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS}
# errno values meaning "this file system has no hard links / no renameat2 flag".
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EXDEV}
_TEMP_NAME = re.compile(r"\.pyquant-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+\.tmp")
USE_O_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir(_PROC_FD)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _prefix() -> str:
    return f".pyquant-{_host()}-{os.getpid()}-"


def remove_stale_temp_files(directory: str) -> None:
    """Removes temporary files that processes of this host which no longer
    exist left in ``directory`` (killed before they could clean up)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    host = _host()
    for name in names:
        m = _TEMP_NAME.fullmatch(name)
        if not m or m["host"] != host or _alive(int(m["pid"])):
            continue
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's), or not a pid: leave it alone
    return True


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # no /proc: read it the only other way (not thread-safe)
    os.umask(old)
    return old


def refuse_same_file(dst: str, inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Raises if ``dst`` is (a link to) one of ``inputs``: writing it would
    destroy the source."""
    try:
        d = os.stat(dst)
    except OSError:
        return
    for src in inputs:
        with contextlib.suppress(OSError):
            s = os.stat(src)
            if (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino):
                raise CheckpointError(f"{dst}: is the same file as the input {os.fspath(src)} "
                                      "(refusing to overwrite the source, even with --force)")


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike[str], *, force: bool = False,
                  inputs: Iterable[str | os.PathLike[str]] = ()) -> Iterator[str]:
    """Yields a path to write the output to (a fresh, empty temporary file in
    ``dst``'s directory). On success it becomes ``dst``; on any exception
    (Ctrl-C and SIGTERM in the CLI included) it is removed and ``dst`` is
    left as it was. An existing ``dst`` is an error unless ``force``; a
    ``dst`` that is one of ``inputs`` always is."""
    with atomic_outputs([dst], force=force, inputs=inputs) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(dsts: Sequence[str | os.PathLike[str]], *, force: bool = False,
                   inputs: Iterable[str | os.PathLike[str]] = ()) -> Iterator[list[str]]:
    """:func:`atomic_output` for a set of files that belong together (the
    parts of a split model): every ``dst`` is checked before any is written,
    and they are published only when all are complete, one after another; if
    one cannot be published, those this call already published are removed
    again, so no partial set is left (files that ``force`` replaced are not
    restored)."""
    names = [os.fspath(d) for d in dsts]
    inputs = list(inputs)
    for dst in names:
        refuse_same_file(dst, inputs)
        if os.path.lexists(dst) and not force:
            raise CheckpointError(f"{dst}: output already exists (use --force / force=True to replace it)")
    temps: list[tuple[str, str, _TempFile]] = []
    try:
        for dst in names:
            directory = os.path.dirname(os.path.abspath(dst))
            remove_stale_temp_files(directory)
            temps.append((dst, directory, _TempFile()))
            temps[-1][2].create(dst, directory)
        yield [tmp.path for _, _, tmp in temps]
        published: list[str] = []
        try:
            for dst, directory, tmp in temps:
                refuse_same_file(dst, inputs)  # again: dst may have appeared meanwhile
                try:
                    _publish(tmp.fd, tmp.named, dst, directory, force)
                except OSError as exc:
                    raise CheckpointError(f"{dst}: cannot write: {exc.strerror}") from None
                published.append(dst)
        except BaseException:
            for dst in published:
                with contextlib.suppress(OSError):
                    os.unlink(dst)
            raise
    finally:
        for _, _, tmp in temps:
            tmp.discard()


class _TempFile:
    """The temporary output. Whatever interrupts (Ctrl-C, SIGTERM in the CLI)
    may land anywhere, even inside os.open once the file exists, so the name
    is recorded before the file is created and :meth:`discard` always works."""

    fd = -1
    named: str | None = None  # None: an unnamed O_TMPFILE file

    @property
    def path(self) -> str:
        return self.named or f"{_PROC_FD}/{self.fd}"

    def create(self, dst: str, directory: str) -> None:
        try:
            if USE_O_TMPFILE:
                try:
                    self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
                    return
                except OSError as exc:
                    if exc.errno not in _NO_TMPFILE:
                        raise
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            for _ in range(100):
                self.named = tempfile.mktemp(prefix=_prefix(), suffix=".tmp", dir=directory)
                try:
                    self.fd = os.open(self.named, flags, 0o600)
                    return
                except FileExistsError:
                    self.named = None  # another file's name: not ours to remove
            raise OSError(errno.EEXIST, "no free temporary file name")
        except OSError as exc:
            raise CheckpointError(f"{dst}: cannot write: {exc.strerror}") from None

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        if self.named:  # already linked as dst on success: this only removes the temporary name
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.named)


def _publish(fd: int, named: str | None, dst: str, directory: str, force: bool) -> None:
    try:
        mode = stat.S_IMODE(os.stat(dst).st_mode) if force else None
    except FileNotFoundError:
        mode = None
    os.fchmod(fd, 0o666 & ~_umask() if mode is None else mode)
    source = named or f"{_PROC_FD}/{fd}"
    if force:
        if named is None:  # an unnamed file can only be linked to a free name, then renamed
            named = _link_to_free_name(source, directory)
        try:
            os.replace(named, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(named)
            raise
        return
    try:
        _link(source, dst)
    except FileExistsError:
        raise _appeared(dst) from None
    except OSError as exc:
        if named is None or exc.errno not in _NO_LINK:
            raise
        _rename_noreplace(named, dst)
        return
    if named:
        os.unlink(named)


def _appeared(dst: str) -> CheckpointError:
    return CheckpointError(f"{dst}: output already exists (it appeared while pyquant was working; "
                           "use --force / force=True to replace it)")


def _link(source: str, dst: str) -> None:
    """link(2) that follows ``source`` (needed for /proc/self/fd/N; os.link
    only calls linkat(AT_SYMLINK_FOLLOW) when given a directory fd)."""
    dfd = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(source, os.path.basename(dst), dst_dir_fd=dfd, follow_symlinks=True)
    finally:
        os.close(dfd)


def _link_to_free_name(source: str, directory: str) -> str:
    for _ in range(100):
        name = tempfile.mktemp(prefix=_prefix(), suffix=".tmp", dir=directory)
        try:
            _link(source, name)  # fails, never follows, if the name exists
            return name
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free temporary name")


def _rename_noreplace(src: str, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE) for file systems without hard links."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        raise OSError(errno.ENOSYS, "this system can publish a file without replacing another "
                      "neither by link() nor by renameat2(); use --force") from None
    at_fdcwd, rename_noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) != 0:
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise _appeared(dst)
        raise OSError(err, os.strerror(err))
