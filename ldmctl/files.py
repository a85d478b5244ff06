"""Writing files safely: output paths checked before long work, atomic writes, folders, hashes.

Every file ldmctl writes (checkpoints, images, reports) goes through :func:`atomic_write`:
temporary file beside the target, fsync, rename, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ldmctl.errors import CheckpointError


def check_writable(path: str | Path) -> Path:
    """Refuse, before any long work, an output file that :func:`atomic_write` could not create."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(f"cannot write {str(path)!r}: folder {str(folder)!r} {what}")
    if path.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: it is a folder", hint="name a file inside it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {str(path)!r}: folder {str(folder)!r} is read-only")
    return path


def ensure_folder(folder: str | Path) -> Path:
    """Create an output folder (and its parents) if needed; failing that is a CheckpointError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create output folder {str(folder)!r}: {err.strerror or err}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write into output folder {str(folder)!r}: it is read-only")
    return folder


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename over ``path``.

    An OSError on the way (read-only folder, full disk) is a CheckpointError, and the temporary
    file is always removed: a failed write leaves nothing behind.
    """
    path = check_writable(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CheckpointError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and safetensors) make 0600; give the usual permissions
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise CheckpointError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["atomic_write", "check_writable", "ensure_folder", "file_sha256"]
