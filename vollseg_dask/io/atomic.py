"""Write beside, swap, remove the old: the one mechanism that replaces files and folders atomically.

A result (a store, a labels group, a table folder, a JSON file) is built under a hidden sibling name
and renamed into place only when complete. Replacing an existing folder takes two renames (the old
one aside, the new one in): a kill between them leaves the old one under its aside name, and
:func:`recover_dir` (called by every writer before it starts, and by readers that find the final
name missing) puts it back. So at any moment the final name holds the old or the new result, or —
for at most two renames — neither, recoverably.

Hidden sibling names::

    .<name>.tmp-<pid>-<uuid8>     being built (a new result, or a file being written)
    .<name>.old-<pid>-<uuid8>     a replaced result on its way out (or to be restored)

:func:`sweep_temporaries` removes what killed writers left behind (their pid is gone).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

__all__ = ["sibling_temp", "commit_dir", "recover_dir", "atomic_write_text", "sweep_temporaries"]

LOG = logging.getLogger(__name__)

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old|new|staging)-(?P<pid>\d+)-[0-9a-f]{8}$")


def sibling_temp(final: str | os.PathLike[str], tag: str = "tmp") -> Path:
    """A hidden, unique sibling path of ``final``: ``.<name>.<tag>-<pid>-<uuid8>``."""
    p = Path(final)
    return p.with_name(f".{p.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _asides(final: Path) -> list[Path]:
    if not final.parent.is_dir():
        return []
    out = []
    for p in final.parent.iterdir():
        m = _TEMP.match(p.name)
        if m and m.group("name") == final.name and m.group("tag") == "old":
            out.append(p)
    return sorted(out, key=lambda p: p.stat().st_mtime_ns)


def recover_dir(final: str | os.PathLike[str]) -> bool:
    """Put a replaced result back when a kill between the two renames of :func:`commit_dir` left
    the final name empty. Returns True when something was restored."""
    final = Path(final)
    if final.exists():
        return False
    asides = _asides(final)
    if not asides:
        return False
    os.replace(asides[-1], final)
    LOG.warning("restored %s from %s (a replacement was interrupted)", final, asides[-1].name)
    return True


def commit_dir(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Move the finished ``tmp`` (file or folder) to ``final``; an existing ``final`` is moved aside
    first and deleted only after the new one is in place.

    Parameters
    ----------
    tmp : path-like
        The complete new result (same file system as ``final``, usually :func:`sibling_temp`).
    final : path-like
        Its name.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = sibling_temp(final, "old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file beside ``path`` and rename it into place (UTF-8).

    The temporary file is removed when the write fails (a full disk), so no ``.tmp`` is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_temp(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sweep_temporaries(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Remove temporaries of dead writers under ``folder``; returns what was removed.

    Removed: ``.<name>.tmp-<pid>-*`` / ``.old-*`` siblings whose pid no longer runs (an ``.old``
    whose final name is missing is restored instead, :func:`recover_dir`) and zarr's
    ``*.partial`` chunk files. Call it only while holding the lock of ``folder``.
    """
    root = Path(folder)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    walker = os.walk(root) if recursive else [(str(root), [d.name for d in root.iterdir() if d.is_dir()],
                                               [f.name for f in root.iterdir() if not f.is_dir()])]
    for dirpath, dirnames, filenames in walker:
        base = Path(dirpath)
        for name in list(dirnames) + list(filenames):
            p = base / name
            m = _TEMP.match(name)
            gone = False
            if m and _pid_gone(int(m.group("pid"))):
                final = base / m.group("name")
                if m.group("tag") == "old" and not final.exists():
                    recover_dir(final)
                    continue
                gone = True
            elif name.endswith(".partial") and not p.is_dir():
                gone = True
            if gone:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
                if name in dirnames:
                    dirnames.remove(name)
    if removed:
        LOG.warning("removed %d temporary file(s) left by an interrupted run under %s", len(removed), root)
    return removed
