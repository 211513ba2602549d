"""Exclusive locks on an output folder or a labels group: one lock file, created with ``O_EXCL``.

The file holds its holder (``pid``, ``host``, ``since`` in epoch seconds, ``what``). A lock whose
holder is a dead process on this host is taken over (logged); a lock from another host is never
guessed at. A refused caller gets a :class:`~vollseg_dask.errors.LockedError` naming the holder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vollseg_dask.errors import LockedError

__all__ = ["hold_lock", "pid_alive", "describe_holder"]

LOG = logging.getLogger(__name__)

# locks this process holds: resolved path -> [thread ident, depth]; the holding thread may re-enter
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether the process that wrote a lock at time ``since`` (epoch s) still runs.

    A killed process that nobody reaped yet (a zombie) is dead; a live process that started after
    ``since`` reuses the pid of a dead one (after a reboot, for instance) and is not the lock's owner.
    """
    import psutil  # a dependency of distributed

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # create_time has a resolution of a clock tick: allow a second before the lock's time
        return not (isinstance(since, int | float) and proc.create_time() > since + 1.0)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def describe_holder(held: dict[str, Any]) -> str:
    """``pid 123 on host since 2026-12-04 18:00:01 UTC`` from a lock file's content."""
    since = held.get("since")
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, int | float)
            else "an unknown time")
    return f"pid {held.get('pid', '?')} on {held.get('host', '?')} since {when}"


def _create(tmp: Path, lock: Path) -> None:
    """Create ``lock`` holding ``tmp``'s content, failing with FileExistsError if it exists."""
    try:
        os.link(tmp, lock)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: exclusive create, then write
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(tmp.read_text(encoding="utf-8"))


@contextmanager
def hold_lock(lock: str | os.PathLike[str], what: str, *, reentrant: bool = False) -> Iterator[Path]:
    """Hold the lock file ``lock`` for the duration of the ``with`` block.

    Parameters
    ----------
    lock : path-like
        Lock file (its folder must exist or be creatable).
    what : str
        Words naming what is locked, for the refusal message (e.g. ``"labels 'cells' of /d/x.zarr"``).
    reentrant : bool
        The thread holding the lock may take it again (a run that locks a labels group for all its
        stages and then calls ``segment``, which locks it too). Other threads are refused.

    Raises
    ------
    LockedError
        Another live process holds the lock; the message names its pid, host and start time.
    """
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock.resolve())
    with _HELD_GUARD:
        rec = _HELD.get(key)
        if reentrant and rec is not None and rec[0] == threading.get_ident():
            rec[1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield lock
        finally:
            with _HELD_GUARD:
                _HELD[key][1] -= 1
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
    # the lock appears with its content in one step (a hard link of a complete file), so a refused
    # caller never reads a half-written holder
    tmp = lock.with_name(f".{lock.name}.tmp-{os.getpid()}-{threading.get_ident() % 16**8:08x}")
    tmp.write_text(json.dumps(me), encoding="utf-8")
    try:
        for _ in range(2):
            try:
                _create(tmp, lock)
            except FileExistsError:
                try:
                    held = json.loads(lock.read_text())
                except (OSError, ValueError):
                    held = {}
                pid = held.get("pid")
                if held.get("host") == me["host"] and isinstance(pid, int) and not pid_alive(pid, held.get("since")):
                    LOG.warning("removing stale lock of dead process %s: %s", pid, lock)
                    lock.unlink(missing_ok=True)
                    continue
                raise LockedError(
                    f"{what} is in use by another run ({describe_holder(held)}); "
                    f"wait for it to finish, or delete {lock} if that run is gone"
                ) from None
            break
        else:
            raise LockedError(f"{what} is in use by another run (its lock {lock} keeps reappearing)")
    finally:
        tmp.unlink(missing_ok=True)
    with _HELD_GUARD:
        _HELD[key] = [threading.get_ident(), 1]
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        lock.unlink(missing_ok=True)
