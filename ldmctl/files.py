"""Writing files safely: output paths checked before long work, atomic writes, folders, hashes.

Every file ldmctl writes (checkpoints, images, reports) goes through :func:`atomic_write`:
temporary file beside the target, fsync, rename, so a crash never leaves a half-written file.
Before any long work a command passes each output through :func:`check_output`, the one guard
that keeps outputs from destroying what the user has: an output that is one of the command's
inputs, an existing checkpoint (without ``--overwrite``), a folder, a FIFO or a device node, or a
name whose suffix is not a format the command writes, is refused. :func:`check_regular` is its
reading side: only regular files are opened as data, metadata, configs or checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from ldmctl.errors import CheckpointError, ConfigError, DataError

CHECKPOINT_SUFFIXES = frozenset({".safetensors", ".pt", ".pth", ".ckpt", ".bin"})
_SAFETENSORS_HEAD = b'{"'  # the JSON header that follows a .safetensors file's 8-byte length


def check_writable(path: str | Path) -> Path:
    """Refuse, before any long work, an output file that :func:`atomic_write` could not create,
    or one whose rename would replace something that is not a regular file (a FIFO, a device node,
    a link to one)."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(f"cannot write {str(path)!r}: folder {str(folder)!r} {what}")
    if path.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: it is a folder", hint="name a file inside it")
    if (path.exists() or path.is_symlink()) and not (path.is_file() and not path.is_symlink()):
        raise CheckpointError(
            f"cannot write {str(path)!r}: it exists and is not a regular file (a link, FIFO or device)",
            hint="choose another output name",
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {str(path)!r}: folder {str(folder)!r} is read-only")
    return path


def check_output(
    path: str | Path,
    *,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    suffixes: Iterable[str] | None = None,
    option: str = "output",
) -> Path:
    """The one output guard of every command, run before any long work: ``path`` must not be one of
    ``inputs`` (even under another name), must not be an existing checkpoint unless ``overwrite``,
    must pass :func:`check_writable`, and must end in one of ``suffixes`` (the formats the command
    writes) when given."""
    path = Path(path)
    if is_input(path, inputs):
        raise ConfigError(f"{option} {str(path)!r} is one of its inputs: it would be overwritten", hint=_OTHER_NAME)
    if path.is_file() and not path.is_symlink() and not overwrite and looks_like_checkpoint(path):
        raise ConfigError(
            f"{option} {str(path)!r} is an existing checkpoint", hint="choose another name, or pass --overwrite"
        )
    check_writable(path)
    if suffixes is not None:
        allowed = sorted(suffixes)
        if path.suffix.lower() not in allowed:
            raise ConfigError(
                f"{option} {str(path)!r}: {path.suffix or 'no suffix'!r} is not a format this command writes",
                hint=f"use one of {', '.join(allowed)}",
            )
    return path


_OTHER_NAME = "choose another output name or folder"


def is_input(path: str | Path, inputs: Iterable[str | Path | None]) -> bool:
    """True when ``path`` names the same file as one of ``inputs`` (links and ``..`` included)."""
    path = Path(path)
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        try:
            if path.exists() and item.exists() and os.path.samefile(path, item):
                return True
        except OSError:
            pass
        if path.resolve() == item.resolve():
            return True
    return False


def looks_like_checkpoint(path: Path) -> bool:
    """A checkpoint by its suffix, or a .safetensors file by its header whatever its name. A ``.pt``
    file holding one bare tensor (``sample --save-tensor``, read without unpickling) is not one."""
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return not _bare_tensor(path)
    if suffix in CHECKPOINT_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(10)[8:] == _SAFETENSORS_HEAD
    except OSError:
        return False


def _bare_tensor(path: Path) -> bool:
    """True for a ``torch.save`` archive whose top-level object is a single tensor (its pickle opens
    with the tensor-rebuild call; a checkpoint's opens with a dict)."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            return name is not None and z.open(name).read(48).startswith(b"\x80\x02ctorch._utils\n_rebuild_tensor")
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def check_regular(path: str | Path, what: str, error: type[Exception] = DataError) -> Path:
    """Refuse to open anything but a regular file as data: a FIFO would block the reader forever,
    a device node would be read without end. ``error`` is the LdmctlError class to raise."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "a FIFO, socket or device"
        raise error(f"{what} {str(path)!r} is not a regular file (it is {kind})")
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
    """SHA-256 of a regular file (a FIFO would block forever: CheckpointError), read in 1 MiB chunks."""
    check_regular(path, "file", CheckpointError)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "CHECKPOINT_SUFFIXES",
    "atomic_write",
    "check_output",
    "check_regular",
    "check_writable",
    "ensure_folder",
    "file_sha256",
    "is_input",
    "looks_like_checkpoint",
]
