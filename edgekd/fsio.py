"""Crash-safe file writes, inter-process locks, file digests and the tolerant reader of a stage's
result.json (stdlib + filelock only; the lowest layer).

Every file that must survive a kill or a power loss goes through here: it is written to a temp
file in the same folder, fsynced, renamed into place, and the folder is fsynced so the rename
itself is durable. Folders are published the same way (`publish_dir_atomic`). Temp names carry
the writer's pid (`.NAME.tmp-PID`, `.NAME.old-PID`) so a cleaner can tell a dead writer's
leftovers from a live one's (`clean_dead_leftovers`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from edgekd.errors import StageError, UserError


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_result(stage_dir: Path) -> dict[str, Any] | None:
    """A stage folder's result.json, or None when it is absent or unreadable (not done)."""
    p = stage_dir / "result.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def fsync_dir(path: Path | str) -> None:
    """Make a rename/creation inside `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. certain network mounts) refuse fsync on a folder
    finally:
        os.close(fd)


def fsync_file(path: Path | str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_bytes_atomic(path: Path | str, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to `path` so readers see the old file or the whole new one, even after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json_atomic(path: Path | str, data: Any, **dump_kw: Any) -> Path:
    dump_kw.setdefault("indent", 2)
    dump_kw.setdefault("default", str)
    return write_bytes_atomic(path, json.dumps(data, **dump_kw).encode("utf-8"))


def replace_durable(tmp: Path | str, final: Path | str) -> None:
    """fsync an already-written temp file, rename it over `final`, fsync the folder."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(dirpath)


def publish_dir_atomic(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` at `final`, replacing what is there.

    `final` is at every instant either the previous complete folder or the new complete one: the old
    one moves aside to `.NAME.old-PID` first, then `tmp` is renamed in, then the old one is deleted.
    A kill between the two renames leaves `final` missing and a `.old-PID` folder that
    `clean_dead_leftovers` removes once this pid is gone. Callers that share `final` with other
    processes hold its `cache_lock` around the check-and-publish.
    """
    _fsync_tree(tmp)
    trash = final.with_name(f".{final.name}.old-{os.getpid()}")
    if trash.exists():
        shutil.rmtree(trash)
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(trash, ignore_errors=True)


_LEFTOVER = re.compile(r"^\..+\.(?:tmp|old)-(\d+)$")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def clean_dead_leftovers(folder: Path) -> list[Path]:
    """Remove `.*.tmp-PID` / `.*.old-PID` entries of `folder` whose PID is no longer running.

    A live process's temp folders are kept: another build sharing the folder (a cache) may be
    writing them right now. Returns what was removed.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _LEFTOVER.match(p.name)
        if not m or (int(m.group(1)) != os.getpid() and pid_alive(int(m.group(1)))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def cache_lock(path: Path, timeout: float = -1, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An inter-process lock for one shared entry `path` (a teacher-cache folder, say).

    Hold it around "is the entry there? if not, make it and `publish_dir_atomic` it": a second build
    that wants the same entry waits (calling `on_wait` once, to say so) and then finds it made,
    instead of making it again and racing on the rename. The lock file sits beside the entry and is
    released by the kernel if the holder dies.
    """
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(f".{path.name}.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire(timeout=timeout)
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def cache_entry(final: Path, done: Callable[[Path], bool] | None = None,
                on_wait: Callable[[], None] | None = None) -> Iterator[Path | None]:
    """Make the shared-cache folder `final` once, whatever the number of builds sharing the cache.

    The one way every shared-cache entry is written: under `cache_lock(final)`, yields None when
    the entry is already complete (`done(final)`, default: the folder exists), else an empty
    private temp folder (`.NAME.tmp-PID`) to fill; on a clean exit that folder is published with
    `publish_dir_atomic`, on an error it is removed. So a second build asking for the same entry
    waits, then finds it made; a reader never sees a half-written entry; a killed writer leaves only
    a `.tmp-PID` folder, removed here (`clean_dead_leftovers`) by the next writer.

        with cache_entry(folder, done=lambda p: (p / "meta.json").is_file()) as tmp:
            if tmp is not None:
                ...write into tmp...
    """
    is_done = done if done is not None else Path.is_dir
    clean_dead_leftovers(final.parent)
    with cache_lock(final, on_wait=on_wait):
        if is_done(final):
            yield None
            return
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            if not is_done(tmp):
                raise StageError(f"cache entry {final} was not completed by its writer", hint="this is a bug in edgekd")
            publish_dir_atomic(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # published (gone already) or failed: nothing half-made stays


class BuildLock:
    """One holder per build folder: a second `edgekd build` into the same --out exits 2 naming the pid.

    The lock is an OS advisory lock (filelock) on `.edgekd.lock`, released by the kernel when the
    holder dies, so a killed build never leaves a stale lock; the holder's pid is written into
    `.edgekd.lock.pid` only so the refusal can name it.
    """

    NAME = ".edgekd.lock"

    def __init__(self, folder: Path) -> None:
        from filelock import FileLock

        self.folder = folder
        self.pid_file = folder / (self.NAME + ".pid")
        self._lock = FileLock(str(folder / self.NAME), timeout=0)

    def acquire(self) -> None:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            holder = "another process"
            with contextlib.suppress(OSError, ValueError):
                holder = f"process {int(self.pid_file.read_text().strip())}"
            raise UserError(f"the build folder {self.folder} is in use by {holder}",
                            hint="wait for that build to finish, or choose another --out") from None
        self.pid_file.write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        if self._lock.is_locked:
            with contextlib.suppress(OSError):
                if self.pid_file.read_text().strip() == str(os.getpid()):
                    self.pid_file.unlink()
            self._lock.release()

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
