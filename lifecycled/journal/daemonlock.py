"""One daemon per journal: an exclusive ``flock`` on ``<journal>.lock`` for the daemon's life.

Two daemons on one journal would each run Recover over the other's in-flight ops and both
dispatch. ``lifecycled run`` takes this lock before it opens the journal (so before any
migration and before Recover); a second ``run`` fails at once, naming the holder's pid,
which the holder writes into the file. The admin commands never take it: they work on the
journal while the daemon runs (SQLite's own locking keeps their writes safe).

The kernel drops the lock when the holder exits, however it exits (SIGKILL included), so
a stale file never blocks a restart. The file is left in place on exit: unlinking a lock
file races with another process that has just opened it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from lifecycled.errors import JournalLocked


def lock_path(db: str | os.PathLike[str]) -> Path:
    """The lock file beside the journal ``db``."""
    return Path(f"{os.fspath(db)}.lock")


def holder(db: str | os.PathLike[str], *, locks: Path = Path("/proc/locks")) -> int | None:
    """The pid of the daemon holding ``db``'s lock, or ``None`` — read from the kernel's lock
    table (``/proc/locks``), so looking never takes the lock, not even for an instant (a
    daemon starting at that moment would otherwise fail)."""
    path = lock_path(db)
    try:
        st = path.stat()
        table = locks.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 fe:00:2197075 0 EOF"; blocked waiters start "->".
        if fields[1:2] == ["FLOCK"] and fields[3:4] == ["WRITE"] and fields[5:6] == [device]:
            return int(fields[4]) if fields[4].isdigit() else None
    return None


class DaemonLock:
    """The daemon's exclusive hold on one journal (a context manager)."""

    def __init__(self, db: str | os.PathLike[str]) -> None:
        self.db = Path(db)
        self.path = lock_path(db)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`JournalLocked` naming the holder's pid."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder is not None else "another process"
            raise JournalLocked(
                f"another lifecycled daemon ({who}) is running on the journal {self.db} "
                f"(lock {self.path}); stop it first — admin commands work meanwhile"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (closing the file releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
