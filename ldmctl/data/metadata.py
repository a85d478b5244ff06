"""What a folder says about its images besides the pixels: captions and extra per-image fields.

``metadata.jsonl`` files follow the Hugging Face ``imagefolder`` convention: each line is
``{"file_name": "cats/a.png", "text": "a cat", ...}`` with ``file_name`` relative to the folder that
holds that ``metadata.jsonl``. ``text`` is the caption; an image without one takes the ``.txt``
file beside it, else ``""``.

Every other key of a line is an **extra field**, passed through as a key of that image's items
(``"brightness": 0.7`` -> ``item["brightness"] == 0.7``), so a conditioner plugin that reads a new
batch key can be trained on a folder. A field is kept when every image has it, with values of
one kind: all strings, or all numbers (all floats if any is; booleans stay booleans). Otherwise,
or when it is named like a built-in item key (``image``, ``label``, ``caption``, ``path``), it is
left out with one warning that says why: the items of one data set must all have the same keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldmctl.errors import DataError

log = logging.getLogger(__name__)

ITEM_KEYS = frozenset({"image", "label", "caption", "path"})  # keys every data set's items have
_ROW_HINT = 'each line must be UTF-8 JSON like {"file_name": "a.png", "text": "a caption"}'

Skip = Callable[[Path, str], None]


def folder_metadata(
    root: Path, files: list[Path], *, skip: Skip | None = None
) -> tuple[list[str], dict[str, list[Any]]]:
    """Return one caption per file, and the extra fields kept (name -> one value per file).

    A metadata row naming a file that does not exist is passed to ``skip(path, reason)``; a row
    that is not valid JSON or UTF-8, or names a file outside ``root``, is a DataError. A row with
    a file name or caption no one would write (NUL or control characters, absurd length, a caption
    that is not text, JSON nested deeper than a caption can be) is skipped and counted: its caption
    is None and the caller leaves its image out. Only regular files are read as ``metadata.jsonl``.
    """
    rows: dict[Path, dict[str, Any] | None] = {}  # None: a row found bad, its image skipped
    for jsonl in sorted(root.rglob("metadata.jsonl")):
        if not jsonl.is_file():  # a FIFO would block the reader forever
            raise DataError(f"{str(jsonl)!r} is not a regular file", hint="metadata.jsonl must be a plain text file")
        rows.update(_read_metadata(jsonl, root, skip or _log_skip))
    bad = {path for path, row in rows.items() if row is None}
    found = [rows.get(path.resolve()) for path in files]
    captions: list[str | None] = []
    for path, row in zip(files, found, strict=True):
        captions.append(None if path.resolve() in bad else _caption(path, row, skip or _log_skip))
    names = dict.fromkeys(k for row in rows.values() if row is not None for k in row if k != "text")
    good = [i for i, c in enumerate(captions) if c is not None]
    fields = {}
    for name in names:
        values = [found[i].get(name) if found[i] is not None else None for i in good]
        why = _unusable(name, values, [files[i] for i in good])
        if why:
            log.warning("metadata field %r is left out of the items: %s", name, why)
        else:
            full: list[Any] = [None] * len(files)
            for i, v in zip(good, _uniform(values), strict=True):
                full[i] = v
            fields[name] = full
    return captions, fields


def _caption(path: Path, row: dict[str, Any] | None, skip: Skip) -> str | None:
    """The caption of ``path``: its row's ``text``, else its ``.txt`` file, else "". A ``.txt`` that
    is too large or whose text is unusable makes it None (skipped and counted), as a bad row does."""
    text = row.get("text") if row is not None else None
    if text is not None:
        return text
    txt = path.with_suffix(".txt")
    if not txt.is_file():  # missing, or a FIFO or device that would block or never end
        return ""
    if txt.stat().st_size > 4 * MAX_CAPTION:  # read nothing larger than a caption can be in UTF-8
        skip(path, f"caption file {txt.name} is {txt.stat().st_size:,} bytes (at most {4 * MAX_CAPTION:,})")
        return None
    text = txt.read_text(encoding="utf-8", errors="replace").strip()
    why = _bad_caption(text)
    if why:
        skip(path, f"caption file {txt.name}: caption {why}")
        return None
    return text


def _log_skip(path: Path, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)


def folder_captions(root: Path, files: list[Path], *, skip: Skip | None = None) -> list[str | None]:
    """Return one caption per file: ``metadata.jsonl`` first, then ``<stem>.txt``, else "" (None:
    the file's metadata row is bad, and the file skipped)."""
    return folder_metadata(root, files, skip=skip)[0]


def _kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    return "number" if isinstance(value, (bool, int, float)) else None


def _unusable(name: str, values: list[Any], files: list[Path]) -> str | None:
    """Why the field ``name`` cannot be an item key (None: it can)."""
    if name in ITEM_KEYS:
        return f"every item already has a {name!r}"
    missing = [f for f, v in zip(files, values, strict=True) if v is None]
    if missing:
        return f"missing (or null) for {len(missing)} of {len(files)} images, e.g. {str(missing[0])!r}"
    kinds = {_kind(v) for v in values}
    if None in kinds or len(kinds) > 1:
        return "its values must all be strings or all numbers"
    return None


def _uniform(values: list[Any]) -> list[Any]:
    """Numbers of one type, so that batches of any rows collate alike."""
    if all(isinstance(v, bool) for v in values) or all(isinstance(v, str) for v in values):
        return values
    if any(isinstance(v, float) for v in values):
        return [float(v) for v in values]
    return [int(v) for v in values]


MAX_NAME = 1024  # characters of a file_name (and 255 bytes per folder or file name, as file systems allow)
MAX_CAPTION = 10_000  # characters of a caption: far beyond what any text encoder reads


def _control(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text if c not in "\t\n\r")


def _bad_name(name: str) -> str | None:
    """Why a file_name cannot name a file of the folder (None: it can)."""
    if "\x00" in name or _control(name):
        return "holds NUL or control characters"
    if len(name) > MAX_NAME or any(len(part.encode("utf-8", "replace")) > 255 for part in name.split("/")):
        return f"is longer than a file name can be ({len(name)} characters)"
    return None


def _bad_caption(text: Any) -> str | None:
    """Why a caption is unusable (None: it is fine); numbers are kept as their text."""
    if text is None or isinstance(text, (int, float)):
        return None
    if not isinstance(text, str):
        return f"is a {type(text).__name__}, not text"
    if "\x00" in text or _control(text):
        return "holds NUL or control characters"
    if len(text) > MAX_CAPTION:
        return f"is {len(text):,} characters long (at most {MAX_CAPTION:,})"
    return None


def _read_metadata(jsonl: Path, root: Path, skip: Skip) -> dict[Path, dict[str, Any] | None]:
    """Read the lines of one ``metadata.jsonl``: resolved image path -> its row without ``file_name``
    (None: a bad row, already passed to ``skip``)."""
    out: dict[Path, dict[str, Any] | None] = {}
    base = root.resolve()
    for number, raw in enumerate(jsonl.read_bytes().splitlines(), start=1):
        where = f"{jsonl}:{number}"
        try:
            row = _parse(raw, number, where)
        except RecursionError:
            skip(jsonl, f"{where}: JSON nested too deep to be a caption")
            continue
        if row is None:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise DataError(f"{where}: expected an object with a string 'file_name'", hint=_ROW_HINT)
        name, text = row.pop("file_name"), row.get("text", "")
        why = _bad_name(name)
        if why:
            skip(jsonl, f"{where}: file_name {why}")
            continue
        _check_unicode(row, where)
        path = (jsonl.parent / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(base):
            raise DataError(
                f"{where}: file_name {name!r} is outside the data folder {str(root)!r}",
                hint="file names are relative to the folder of metadata.jsonl and stay inside it",
            )
        why = _bad_caption(text)
        if why:
            skip(path, f"{where}: caption {why}")
            out[path] = None
            continue
        row["text"] = "" if text is None else str(text)
        if not path.exists():
            skip(path, f"listed in {where} but missing")
        out[path] = row
    return out


def _parse(raw: bytes, number: int, where: str) -> Any:
    """The JSON value of one line (None: a blank line); DataError for bytes that are not UTF-8 JSON.
    A RecursionError (JSON nested deeper than the parser goes) is the caller's to handle."""
    try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # tolerate a BOM
        return json.loads(line) if line.strip() else None
    except UnicodeDecodeError as err:
        raise DataError(
            f"{where}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})", hint=_ROW_HINT
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg})", hint=_ROW_HINT) from None


def _check_unicode(row: dict[str, Any], where: str) -> None:
    """DataError for a string value holding a lone surrogate such as "\\ud800" (valid JSON, not text)."""
    for key, value in row.items():
        try:
            if isinstance(value, str):
                value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                f"{where}: the {key!r} value is not valid Unicode (lone surrogate)", hint=_ROW_HINT
            ) from None


__all__ = ["ITEM_KEYS", "folder_captions", "folder_metadata"]
