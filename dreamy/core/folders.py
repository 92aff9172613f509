"""Output folders: the one up-front check every command runs on its output folder, one run per folder at a
time, and the temporary files that a killed write leaves behind.

- `check_out_folder`: refused up front, before any work, are an empty path, a path that is (or runs through) a
  file, a symlink that points nowhere (dangling) or at itself (a loop), and a folder this process cannot
  create or write into. A symlink to a real folder is fine. `dream image|prompt` (`runs.store.prepare_out_dir`)
  and `dream sae-train` (`sae.train.check_out_dir`) both call it.
- `folder_lock`: an exclusive `flock` on `DIR/.dreamy.lock` for a run's life (re-entrant in one thread); a
  second holder, in any process, is refused naming the first. The system drops the lock however its holder
  dies, so a killed run never leaves a stale lock.
- `foreign_entries`: what a folder holds besides a run's own files (a command refuses to write among the
  user's files); `lock_holder`: who holds a folder's lock (a run still writing it), or None.
- `remove_stale_temps`: the temporary files of `core.files.write_atomic` that a SIGKILL left (call it while
  holding the folder's lock, so no live writer's file is taken).

Example:
    >>> import tempfile
    >>> folder = check_out_folder(tempfile.mkdtemp())
    >>> with folder_lock(folder):
    ...     (folder / LOCK_NAME).exists()
    True
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from dreamy.core.files import umask

LOCK_NAME = ".dreamy.lock"
# `write_atomic` writes `.NAME.XXXXXXXX` (mkstemp: 8 of [a-z0-9_]) and renames it over NAME
_TEMP_SUFFIX = re.compile(r"\.[a-z0-9_]{8}$")


class OutDirError(ValueError):
    """The output folder cannot be used for this run (unwritable, a dangling symlink, held by another run, ...)."""


def _symlink_problem(path: Path, shown: str) -> str | None:
    """Why symlink `path` cannot be followed (dangling or a loop), or None when it can."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return (f"output folder {shown}: '{path}' is a symlink loop (it points back at itself); "
                    "remove the link or choose another folder")
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return (f"output folder {shown}: '{path}' is a symlink to '{target}', which does not exist; create its "
                "target, remove the link, or choose another folder")
    return None


def check_out_folder(directory: str | os.PathLike) -> Path:
    """Refuse (`OutDirError`, one line) an output folder that cannot be used, before any work; returns it as a
    `Path` (as given: the caller writes where it checked). Nothing is created or left behind. See the module
    docstring for what is refused.

    Example:
        >>> check_out_folder("")
        Traceback (most recent call last):
        ...
        dreamy.core.folders.OutDirError: --out is empty (out_dir=''); name an output folder, e.g. --out dreams/
    """
    if str(directory).strip() == "":
        raise OutDirError("--out is empty (out_dir=''); name an output folder, e.g. --out dreams/")
    path = Path(directory)
    existing = path
    while True:  # up to the first part that exists; every symlink on the way must lead somewhere
        if existing.is_symlink():
            problem = _symlink_problem(existing, str(directory))
            if problem:
                raise OutDirError(problem)
        if existing.exists() or existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise OutDirError(f"output folder {directory} is a file, not a folder; give a folder")
        raise OutDirError(f"output folder {directory} cannot be made: '{existing}' is a file, not a folder; "
                          "give another folder")
    try:
        Path(tempfile.mkdtemp(prefix=".dreamy-write-test-", dir=existing)).rmdir()
    except OSError as error:
        raise OutDirError(f"output folder {directory} is not writable ({error.strerror or error}); "
                          "choose another folder") from error
    return path


def _holder(path: Path) -> str:
    """Who holds a lock file, in words (what its holder wrote into it)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info['pid']} on {info.get('host', '?')}, since {since}: {info.get('command', '?')}"


def _locked_by_this_thread(path: Path) -> bool:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("pid") == os.getpid() and info.get("thread") == threading.get_ident()


def _in_use(folder: str | os.PathLike, path: Path) -> OutDirError:
    return OutDirError(f"output folder {folder} is in use by another dream run ({_holder(path)}); wait for it "
                       "to finish or choose another folder")


def check_unlocked(directory: str | os.PathLike) -> None:
    """Refuse (`OutDirError`, naming the holder) a folder that another run holds with `folder_lock`.

    Example:
        >>> import tempfile
        >>> check_unlocked(tempfile.mkdtemp())
    """
    import fcntl

    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        if not _locked_by_this_thread(path):
            raise _in_use(directory, path) from None
    finally:
        os.close(fd)


@contextmanager
def folder_lock(directory: str | os.PathLike, command: str = "") -> Iterator[bool]:
    """Hold an exclusive lock on folder `directory` (created if missing) while the block runs; yields True
    for the outermost holder and False for a re-entrant one (the same thread already holds it: a no-op).

    A second holder, from another process or thread, gets `OutDirError` naming the first (pid, host, start,
    command). The lock file is removed on every normal exit (and the folder too when the lock made it and nothing
    was written into it); a killed holder's lock is released by the system.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with folder_lock(folder) as outer:
        ...     with folder_lock(folder) as inner:
        ...         outer, inner
        (True, False)
    """
    import fcntl

    folder = Path(directory)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if _locked_by_this_thread(path):
                yield False
                return
            raise _in_use(folder, path) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # a releasing holder may have unlinked it meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "thread": threading.get_ident(), "host": socket.gethostname(),
                "started": time.time(), "command": command or " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield True
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:
            try:
                folder.rmdir()  # made for a run that wrote nothing: leave no empty folder behind
            except OSError:
                pass


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str] = (), pattern: str | None = None) -> list[Path]:
    """Remove the temporary files `write_atomic` left in `folder` for the files `names` (`.NAME.XXXXXXXX`), and
    those whose NAME matches the regular expression `pattern`; returns what was removed. Only a run holding the
    folder's `folder_lock` should call it (a live writer's temporary file looks the same).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); _ = (folder / ".checkpoint.pt.abcd1234").write_bytes(b"half")
        >>> [p.name for p in remove_stale_temps(folder, ["checkpoint.pt"])], list(folder.iterdir())
        (['.checkpoint.pt.abcd1234'], [])
    """
    folder = Path(folder)
    wanted = set(names)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or not _TEMP_SUFFIX.search(name):
            continue
        original = name[1:-9]
        if original in wanted or (pattern is not None and re.fullmatch(pattern, original)):
            if entry.is_file() and not entry.is_symlink():
                entry.unlink()
                removed.append(entry)
    return removed


def _ours(name: str, wanted: set[str], pattern: str | None) -> bool:
    """Whether file name `name` is one of `wanted`, matches `pattern`, or is a `write_atomic` temporary file of one."""
    if name.startswith(".") and _TEMP_SUFFIX.search(name):
        name = name[1:-9]
    return name in wanted or (pattern is not None and re.fullmatch(pattern, name) is not None)


def foreign_entries(directory: str | os.PathLike, names: Iterable[str] = (), pattern: str | None = None) -> list[Path]:
    """What folder `directory` holds besides the files a run of ours writes there: its lock file, the files
    `names`, those whose name matches the regular expression `pattern`, and the temporary files `write_atomic`
    leaves for them; sorted by name. Empty for a folder that does not exist.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); _ = (folder / "cfg.json").write_text("{}"); _ = (folder / "notes.txt").write_text("mine")
        >>> [p.name for p in foreign_entries(folder, ["cfg.json"])]
        ['notes.txt']
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    wanted = set(names) | {LOCK_NAME}
    return sorted((entry for entry in folder.iterdir() if not _ours(entry.name, wanted, pattern)
                   or not (entry.is_file() or entry.is_symlink())), key=lambda entry: entry.name)


def lock_holder(directory: str | os.PathLike) -> str | None:
    """Who holds folder `directory`'s `folder_lock` now, in words (pid, host, start, command), or None when
    nobody does (this thread's own lock counts as nobody's).

    Example:
        >>> import tempfile
        >>> lock_holder(tempfile.mkdtemp()) is None
        True
    """
    try:
        check_unlocked(directory)
    except OutDirError:
        return _holder(Path(directory) / LOCK_NAME)
    return None


__all__ = ["LOCK_NAME", "OutDirError", "check_out_folder", "check_unlocked", "folder_lock", "foreign_entries",
           "lock_holder", "remove_stale_temps"]
