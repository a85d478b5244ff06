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
    that is not valid JSON or UTF-8, or names a file outside ``root``, is a DataError.
    """
    rows: dict[Path, dict[str, Any]] = {}
    for jsonl in sorted(root.rglob("metadata.jsonl")):
        rows.update(_read_metadata(jsonl, root, skip))
    found = [rows.get(path.resolve()) for path in files]
    captions = []
    for path, row in zip(files, found, strict=True):
        text = row.get("text") if row is not None else None
        if text is None:
            txt = path.with_suffix(".txt")
            text = txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else ""
        captions.append(text)
    names = dict.fromkeys(k for row in rows.values() for k in row if k != "text")
    fields = {}
    for name in names:
        values = [row.get(name) if row is not None else None for row in found]
        why = _unusable(name, values, files)
        if why:
            log.warning("metadata field %r is left out of the items: %s", name, why)
        else:
            fields[name] = _uniform(values)
    return captions, fields


def folder_captions(root: Path, files: list[Path], *, skip: Skip | None = None) -> list[str]:
    """Return one caption per file: ``metadata.jsonl`` first, then ``<stem>.txt``, else ""."""
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


def _read_metadata(jsonl: Path, root: Path, skip: Skip | None) -> dict[Path, dict[str, Any]]:
    """Read the lines of one ``metadata.jsonl``: resolved image path -> its row without ``file_name``."""
    out: dict[Path, dict[str, Any]] = {}
    base = root.resolve()
    for number, raw in enumerate(jsonl.read_bytes().splitlines(), start=1):
        where = f"{jsonl}:{number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # tolerate a BOM
            row = json.loads(line) if line.strip() else None
        except UnicodeDecodeError as err:
            raise DataError(
                f"{where}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})", hint=_ROW_HINT
            ) from None
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg})", hint=_ROW_HINT) from None
        if row is None:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise DataError(f"{where}: expected an object with a string 'file_name'", hint=_ROW_HINT)
        name, text = row.pop("file_name"), row.get("text", "")
        row["text"] = "" if text is None else str(text)
        for key, value in row.items():
            try:
                if isinstance(value, str):
                    value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate such as "\ud800" is valid JSON, not text
                raise DataError(
                    f"{where}: the {key!r} value is not valid Unicode (lone surrogate)", hint=_ROW_HINT
                ) from None
        path = (jsonl.parent / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(base):
            raise DataError(
                f"{where}: file_name {name!r} is outside the data folder {str(root)!r}",
                hint="file names are relative to the folder of metadata.jsonl and stay inside it",
            )
        if not path.exists() and skip is not None:
            skip(path, f"listed in {where} but missing")
        out[path] = row
    return out


__all__ = ["ITEM_KEYS", "folder_captions", "folder_metadata"]
