"""One writer per run folder, and starts that leave nothing behind when they fail.

``with run_folder(out, resume=..., say=...):`` wraps a whole training run:

- **lock**: ``out/.lock`` holds the writer's process id, created exclusively. A second ``train-*``
  (or ``--resume``) on the same folder while that process lives is refused, naming it; the lock of
  a process that no longer runs (killed, crashed machine) is stale and taken over, with a notice.
- **failed starts**: when a new run fails before its first complete checkpoint, everything it
  created in ``out`` is removed again (the folder too, if it made it), so the rerun starts clean.
  A start killed outright (SIGKILL) cannot clean up: it leaves its stale lock and no checkpoint,
  and the rerun, seeing exactly that, clears the leftovers and starts afresh.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ldmctl.errors import ConfigError

log = logging.getLogger(__name__)

LOCK = ".lock"
LEFTOVERS = ("config.json", "ae_source.json", "log.jsonl", "summary.json")  # what a start writes first


@contextmanager
def run_folder(
    out: Path, *, resume: bool, main: bool = True, say: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold ``out``'s lock while the block runs; when it fails before any complete checkpoint exists,
    remove what it created (on ``--resume``, only a folder it made itself). ``main`` False (a DDP
    rank other than 0): nothing."""
    if not main:
        yield
        return
    say = say or log.warning
    existed = out.is_dir()
    before = set(os.listdir(out)) if existed else set()
    lock = _acquire(out, resume, say)
    ok = False
    try:
        yield
        ok = True
    finally:
        lock.unlink(missing_ok=True)
        if not ok and (not resume or not existed) and not _has_checkpoint(out):
            _remove_new(out, existed, before)


def _has_checkpoint(out: Path) -> bool:
    return any(p.with_suffix(".state.pt").is_file() for p in (out / "checkpoints").glob("step_*.safetensors"))


def _remove_new(out: Path, existed: bool, before: set[str]) -> None:
    """Remove what a failed start made: the folder, or the entries of it that were not there before."""
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in set(os.listdir(out)) - before:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _acquire(out: Path, resume: bool, say: Callable[[str], None]) -> Path:
    """Create ``out/.lock`` exclusively, taking over a stale one; ConfigError while a live process holds it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output folder {str(out)!r}: {err.strerror or err}") from None
    lock = out / LOCK
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _holder(lock)
            if pid is not None and _alive(pid):
                raise ConfigError(
                    f"run folder {str(out)!r} is in use by process {pid} (lock file {str(lock)!r})",
                    hint="wait for that run to end or stop it; a lock whose process is gone is taken over",
                ) from None
            say(f"taking over the stale lock of process {pid} in {out} (it no longer runs)")
            lock.unlink(missing_ok=True)
            if not resume and not _has_checkpoint(out):  # a start killed before its first checkpoint
                for name in LEFTOVERS:
                    (out / name).unlink(missing_ok=True)
            continue
        except OSError as err:
            raise ConfigError(f"cannot write into run folder {str(out)!r}: {err.strerror or err}") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return lock
    raise ConfigError(f"run folder {str(out)!r}: could not take its lock {str(lock)!r}")


def _holder(lock: Path) -> int | None:
    """The process id written in a lock file (None: unreadable or garbled, hence stale)."""
    try:
        return int(lock.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True while process ``pid`` exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except (OverflowError, OSError):
        return False
    return True


__all__ = ["LOCK", "run_folder"]
