"""Hostile and broken inputs (issue 7): images, ``metadata.jsonl``, checkpoints and CLI values.

Every case ends in exactly one ``error:`` line and exit code 1, with no traceback and no file
(temporary or partial) left behind -- except a bad image inside a data set, which is skipped,
warned about and counted, never fatal. The CLI cases go through ``ldmctl.cli.main``, the real
error boundary, on tiny models trained for one step.
"""

from __future__ import annotations

import ast
import errno
import io
import json
import logging
import os
import pickle
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from ldmctl.cli import main
from ldmctl.config import DataConfig
from ldmctl.data import open_dataset

REPO = Path(__file__).resolve().parents[2]
TINY_AE = ["--preset", "tiny", "--data", "builtin:synthetic", "--perceptual", "none", "--max-steps", "1"]
TINY_AE += ["--set", "model.channel_mult=[1,2]", "--set", "model.mid_attention=false"]


class Models(NamedTuple):
    ae_run: Path  # the train-ae run folder (checkpoints and training state)
    ae: Path
    ldm: Path  # unconditional
    sr: Path  # x4 super-resolution


@pytest.fixture(scope="module")
def models(tmp_path_factory, run_cli) -> Models:
    root = tmp_path_factory.mktemp("models")
    ae = root / "ae" / "ae.safetensors"
    ldm = ["train-ldm", "--preset", "tiny", "--ae", ae, "--data", "builtin:synthetic", "--max-steps", "1"]
    ldm += ["--set", "model.unet.attention_levels=[]", "--set", "model.unet.mid_attention=false"]
    for args in (
        ["train-ae", *TINY_AE, "--out-dir", root / "ae"],
        [*ldm, "--out-dir", root / "ldm"],
        [*ldm, "--task", "superres", "--size", "32", "--out-dir", root / "sr"],
    ):
        run_cli(*args)
    return Models(root / "ae", ae, root / "ldm" / "ldm.safetensors", root / "sr" / "ldm.safetensors")


# --------------------------------------------------------------------------------------------
# helpers


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """Run ``ldmctl ARGS`` through its console-script entry point: (exit code, stdout + stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def _tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, hidden and temporary ones included."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


def _fails_cleanly(capsys: pytest.CaptureFixture[str], args: list[object], match: str, watch: Path) -> None:
    """``ldmctl ARGS`` exits 1 with one ``error:`` line, ``match`` in its message, no traceback,
    and nothing new under ``watch``."""
    before = _tree(watch)
    code, text = _run(capsys, *args)
    assert code == 1, text
    assert "Traceback" not in text, text
    assert len([line for line in text.splitlines() if line.startswith("error:")]) == 1, text
    assert match in text, text
    assert _tree(watch) == before, f"left behind: {sorted(_tree(watch) - before)}"


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(w: int, h: int) -> Image.Image:
    """Random pixels: incompressible, so a cut file really is truncated."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_claiming(w: int, h: int) -> bytes:
    """A 65-byte PNG whose header claims ``w`` x ``h`` pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (12, 12), c) for c in ("red", "green", "blue")]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)


def _palette() -> bytes:
    img = Image.new("P", (12, 12))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    return _encode(img, "PNG", transparency=0)


# kind -> (suffix, bytes, None if usable else a phrase of why not)
IMAGES: dict[str, tuple[str, Callable[[], bytes], str | None]] = {
    "zero-byte": (".png", lambda: b"", "empty"),
    "truncated-png": (".png", lambda: _encode(_noise(32, 32), "PNG")[:600], "truncated"),
    "truncated-jpeg": (".jpg", lambda: _encode(_noise(32, 32), "JPEG")[:400], "truncated"),
    "text-named-png": (".png", lambda: b"this is not a png", "not an image"),
    "garbage-after-png-signature": (".png", lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not an image"),
    "decompression-bomb": (".png", lambda: _png_claiming(40_000, 40_000), "decompression-bomb"),
    "enormous": (".png", lambda: _png_claiming(10_000, 9_000), "max_pixels"),
    "cmyk-jpeg": (".jpg", lambda: _encode(Image.new("CMYK", (12, 12), (0, 255, 0, 0)), "JPEG"), None),
    "16-bit-png": (".png", lambda: _encode(Image.fromarray(np.full((12, 12), 40000, np.uint16)), "PNG"), None),
    "palette-png": (".png", _palette, None),
    "animated-png": (".png", lambda: _animated("PNG"), None),
    "animated-webp": (".webp", lambda: _animated("WEBP"), None),
    "1x1": (".png", lambda: _encode(Image.new("RGB", (1, 1), "white"), "PNG"), None),
}


def _write_image(folder: Path, kind: str) -> tuple[Path, str | None]:
    suffix, make, reason = IMAGES[kind]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}{suffix}"
    path.write_bytes(make())
    return path, reason


@pytest.fixture
def readonly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder nobody may write into. Root ignores permission bits, so there the refusals the
    kernel gives everyone else are simulated where files and folders get created."""
    folder = (tmp_path / "readonly").resolve()
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:

        def inside(p: object) -> bool:
            p = Path(str(p)).resolve()
            return p == folder or folder in p.parents

        def denied(path: object) -> PermissionError:
            return PermissionError(errno.EACCES, "Permission denied", str(path))

        real_access, real_mkdir, real_mkstemp = os.access, os.mkdir, tempfile.mkstemp

        def access(path, mode, **kwargs):
            return not (mode & os.W_OK and inside(path)) and real_access(path, mode, **kwargs)

        def mkdir(path, *args, **kwargs):
            if inside(Path(path).parent):
                raise denied(path)
            return real_mkdir(path, *args, **kwargs)

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and inside(dir):
                raise denied(dir)
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    yield folder
    folder.chmod(0o755)


# --------------------------------------------------------------------------------------------
# image files: inside a data set (skipped and counted) and given to a command (an error)


@pytest.mark.parametrize("kind", IMAGES)
def test_image_in_a_data_set_is_used_or_skipped_and_counted(kind, tmp_path, caplog):
    Image.new("RGB", (16, 16), (30, 120, 200)).save(tmp_path / "good.png")
    path, reason = _write_image(tmp_path, kind)
    with caplog.at_level(logging.WARNING, logger="ldmctl.data"):
        ds = open_dataset(DataConfig(source=str(tmp_path), size=8))
        items = [ds[i] for i in range(len(ds))]
    assert all(it["image"].shape == (3, 8, 8) and it["image"].isfinite().all() for it in items)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if reason is None:
        assert ds.skipped == [] and len(items) == 2 and warned == []
        return
    assert [p for p, _ in ds.skipped] == [str(path)] and reason in ds.skipped[0][1].lower()
    assert {Path(it["path"]).name for it in items} == {"good.png"}
    assert len(warned) == 1 and warned[0].startswith(f"skipping {path}")
    assert "skipped 1 bad files" in ds.summary()


@pytest.mark.parametrize("kind", IMAGES)
def test_image_given_to_reconstruct_works_or_fails_cleanly(kind, models, tmp_path, capsys):
    path, reason = _write_image(tmp_path / "in", kind)
    out = tmp_path / "an-output-folder-whose-name-alone-is-longer-than-the-80-columns-of-a-pipe"
    if reason is not None:
        _fails_cleanly(capsys, ["reconstruct", models.ae, path, "--out-dir", out], str(path), tmp_path)
        return
    code, text = _run(capsys, "reconstruct", models.ae, path, "--out-dir", out)
    assert code == 0 and str(out / f"{kind}.png") in text.splitlines(), text  # a long path stays one line
    with Image.open(out / f"{kind}.png") as rec, Image.open(path) as src:
        assert rec.size == src.size and rec.mode == "RGB"


def test_eval_folder_skips_and_counts_bad_images(models, tmp_path, capsys):
    data = tmp_path / "data"
    for kind in ("zero-byte", "truncated-png", "1x1"):  # 1x1 is too small for SSIM's window
        _write_image(data, kind)
    Image.new("RGB", (16, 16), (30, 120, 200)).save(data / "good.png")
    report = tmp_path / "report.json"
    code, text = _run(capsys, "eval-ae", models.ae, "--data", data, "--size", "0", "--json", report)
    assert code == 0 and "skipped 3 unusable file(s)" in text, text
    result = json.loads(report.read_text())
    assert result["n"] == 1 and len(result["skipped"]) == 3


@pytest.mark.parametrize("command", ["train-ae", "eval-ae"])
def test_data_set_with_nothing_usable_is_a_clear_error(command, models, tmp_path, capsys):
    for kind in ("zero-byte", "text-named-png", "truncated-png"):
        _write_image(tmp_path / "data", kind)
    args, match = {
        "train-ae": (
            ["train-ae", *TINY_AE, "--size", "8", "--data", tmp_path / "data", "--out-dir", tmp_path / "run"],
            "none of the images",
        ),
        "eval-ae": (
            ["eval-ae", models.ae, "--data", tmp_path / "data", "--size", "0", "--json", tmp_path / "r.json"],
            "no image to evaluate",
        ),
    }[command]
    _fails_cleanly(capsys, args, match, tmp_path)


# --------------------------------------------------------------------------------------------
# metadata.jsonl


BROKEN_METADATA = {
    "invalid-json": ([b'{"file_name": "a.png", "text": "ok"}', b"{oops"], "metadata.jsonl:2: not valid JSON"),
    "not-an-object": ([b'["a.png", "a caption"]'], "expected an object"),
    "escapes-the-folder": ([b'{"file_name": "../../etc/passwd", "text": "x"}'], "outside the data folder"),
    "absolute-path": ([b'{"file_name": "/etc/passwd", "text": "x"}'], "outside the data folder"),
    "caption-invalid-utf8": ([b'{"file_name": "a.png", "text": "caf\xe9"}'], "metadata.jsonl:1: not valid UTF-8"),
    "caption-lone-surrogate": ([b'{"file_name": "a.png", "text": "\\ud800"}'], "not valid Unicode"),
}


def _folder_with_metadata(root: Path, lines: list[bytes]) -> Path:
    root.mkdir()
    Image.new("RGB", (16, 16), (30, 120, 200)).save(root / "a.png")
    (root / "metadata.jsonl").write_bytes(b"\r\n".join(lines) + b"\r\n")
    return root


@pytest.mark.parametrize("case", BROKEN_METADATA)
def test_broken_metadata_is_a_clear_error(case, tmp_path, capsys):
    lines, match = BROKEN_METADATA[case]
    data = _folder_with_metadata(tmp_path / "data", lines)
    _fails_cleanly(
        capsys, ["train-ae", *TINY_AE, "--size", "8", "--data", data, "--out-dir", tmp_path / "run"], match, tmp_path
    )


def test_metadata_row_of_a_missing_file_is_skipped_and_counted(tmp_path):
    lines = [b'\xef\xbb\xbf{"file_name": "a.png", "text": "ok"}', b'{"file_name": "gone.png", "text": "lost"}']
    data = _folder_with_metadata(tmp_path / "data", lines)  # a BOM and CRLF line ends are fine
    ds = open_dataset(DataConfig(source=str(data), size=8))
    assert len(ds) == 1 and ds[0]["caption"] == "ok"
    assert ds.skipped == [(str((data / "gone.png").resolve()), f"listed in {data / 'metadata.jsonl'}:2 but missing")]
    assert "skipped 1 bad files" in ds.summary()


# --------------------------------------------------------------------------------------------
# checkpoints


class _Payload:
    """Unpickling this creates the folder ``marker``: proof that a loader ran foreign code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _header_edit(edit: Callable[[dict], None]) -> Callable[[bytes, Path], bytes]:
    """A tamperer that rewrites the JSON header of a .safetensors file (8-byte length + JSON + data)."""

    def tamper(raw: bytes, _marker: Path) -> bytes:
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        edit(header)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + raw[8 + n :]

    return tamper


def _config_edit(edit: Callable[[dict], None]) -> Callable[[bytes, Path], bytes]:
    """A tamperer of the ``ldmctl.config`` JSON stored in the header's metadata."""

    def on_header(header: dict) -> None:
        config = json.loads(header["__metadata__"]["ldmctl.config"])
        edit(config)
        header["__metadata__"]["ldmctl.config"] = json.dumps(config)

    return _header_edit(on_header)


def _swap_first_matrix(header: dict) -> None:
    """Reverse the shape of the first tensor whose shape is not a palindrome (same byte size)."""
    key = next(k for k, v in header.items() if k != "__metadata__" and v["shape"] != v["shape"][::-1])
    header[key]["shape"] = header[key]["shape"][::-1]


def _offsets_past_the_end(header: dict) -> None:
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 1 << 40]


def _missing_plugin(config: dict) -> None:
    config["ldm"]["conditioners"] = [{"name": "depth", "options": {}, "dropout": 0.1}]
    config["plugins"] = {"depth": {"package": "ldmctl-depth", "version": "1.0"}}


def _pickle(raw: bytes, marker: Path) -> bytes:
    return pickle.dumps({"state_dict": _Payload(marker)}, protocol=2)  # torch.load's own protocol


def _as_is(raw: bytes, _marker: Path) -> bytes:
    return raw


# case -> (command, source model, tamperer, message phrase, file name)
CHECKPOINTS = {
    "truncated": ("sample", "ldm", lambda raw, _: raw[: len(raw) // 2], "not a readable", "m.safetensors"),
    "truncated-named-like-rich-markup": (
        "sample",
        "ldm",
        lambda raw, _: raw[:100],
        "[red]/[/x]",
        "[red]/[/x].safetensors",
    ),
    "zero-byte": ("sample", "ldm", lambda raw, _: b"", "not a readable", "m.safetensors"),
    "header-length-past-the-end": (
        "sample",
        "ldm",
        lambda raw, _: struct.pack("<Q", 1 << 40) + raw[8:],
        "not a readable",
        "m.safetensors",
    ),
    "header-not-json": (
        "sample",
        "ldm",
        lambda raw, _: raw[:8] + b"\x00" * 64 + raw[72:],
        "not a readable",
        "m.safetensors",
    ),
    "tensor-offsets-past-the-end": (
        "sample",
        "ldm",
        _header_edit(_offsets_past_the_end),
        "not a readable",
        "m.safetensors",
    ),
    "tensor-shape-swapped": ("sample", "ldm", _header_edit(_swap_first_matrix), "do not match", "m.safetensors"),
    "config-not-json": (
        "sample",
        "ldm",
        _header_edit(lambda h: h["__metadata__"].update({"ldmctl.config": "{x"})),
        "corrupt metadata",
        "m.safetensors",
    ),
    "config-unknown-key": (
        "sample",
        "ldm",
        _config_edit(lambda c: c["ldm"]["unet"].update(heads_typo=3)),
        "stored config is invalid",
        "m.safetensors",
    ),
    "schema-from-the-future": (
        "sample",
        "ldm",
        _header_edit(lambda h: h["__metadata__"].update({"ldmctl.schema": "99"})),
        "upgrade ldmctl",
        "m.safetensors",
    ),
    "autoencoder-given-to-sample": ("sample", "ae", _as_is, "autoencoder checkpoint", "m.safetensors"),
    "autoencoder-given-to-superres": ("superres", "ae", _as_is, "autoencoder checkpoint", "m.safetensors"),
    "ldm-given-to-reconstruct": ("reconstruct", "ldm", _as_is, "is a ldm checkpoint", "m.safetensors"),
    "conditioner-plugin-not-installed": (
        "sample",
        "ldm",
        _config_edit(_missing_plugin),
        "pip install ldmctl-depth",
        "m.safetensors",
    ),
    "pickle-named-safetensors": ("sample", "ldm", _pickle, "not a readable", "m.safetensors"),
    "pickle-named-pt": ("superres", "sr", _pickle, "not a readable", "m.pt"),
    "pickle-as-lpips-weights": ("eval-ae", "ae", _pickle, "could not be read", "alexnet.pth"),
    "pickle-as-training-state": ("resume", "ae", _pickle, "unreadable", "state.pt"),
}


def _checkpoint_args(command: str, ckpt: Path, models: Models, tmp: Path) -> list[object]:
    image = tmp / "in" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (16, 16), (30, 120, 200)).save(image)
    if command == "resume":  # a copy of the train-ae run whose training state is the tampered file
        run = shutil.copytree(models.ae_run, tmp / "out" / "run")
        for state in run.glob("checkpoints/*.state.pt"):
            shutil.copyfile(ckpt, state)
        return ["train-ae", *TINY_AE, "--out-dir", run, "--resume"]
    out = tmp / "out"
    out.mkdir()
    return {
        "sample": ["sample", ckpt, "--n", "1", "--steps", "1", "--out-file", out / "s.png"],
        "superres": ["superres", image, "--model", ckpt, "--steps", "1", "-o", out / "s.png"],
        "reconstruct": ["reconstruct", ckpt, image, "--out-dir", out],
        "eval-ae": [
            "eval-ae",
            models.ae,
            "--data",
            image.parent,
            "--size",
            "0",
            "--lpips-weights",
            ckpt,
            "--out-dir",
            out,
            "--json",
            out / "r.json",
        ],
    }[command]


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_broken_checkpoint_is_a_clear_error(case, models, tmp_path, capsys):
    command, source, tamper, match, name = CHECKPOINTS[case]
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt" / name
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(tamper(getattr(models, source).read_bytes(), marker))
    args = _checkpoint_args(command, ckpt, models, tmp_path)
    _fails_cleanly(capsys, args, match, tmp_path / "out")
    assert not marker.exists(), "a pickle was unpickled with code execution"


def test_only_safe_loaders_in_the_package():
    """Only safetensors are loaded as models: every ``torch.load`` passes ``weights_only=True``
    and nothing unpickles through ``pickle`` (checked on the syntax tree, not by regex)."""
    loads, bad = 0, []
    for path in sorted([*(REPO / "ldmctl").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "_pickle"):
                bad += [
                    f"{where}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name in ("load", "loads", "Unpickler")
                ]
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
                bad.append(f"{where}: {name}(...)")
            if name == "torch.load":
                loads += 1
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    bad.append(f"{where}: torch.load without weights_only=True")
    assert loads > 0 and bad == []


# --------------------------------------------------------------------------------------------
# CLI values


def _values_args(command: str, models: Models, tmp: Path) -> list[object]:
    image = tmp / "a.png"
    Image.new("RGB", (16, 16), (30, 120, 200)).save(image)
    report = ["--json", tmp / "r.json"]
    ldm = ["--preset", "tiny", "--ae", models.ae, "--data", "builtin:synthetic", "--max-steps", "1"]
    return {
        "sample": ["sample", models.ldm, "--n", "1", "--steps", "1", "--out-file", tmp / "s.png"],
        "superres": ["superres", image, "--model", models.sr, "--steps", "1", "-o", tmp / "s.png"],
        "eval-sr": ["eval-sr", "--model", models.sr, "--data", tmp, "--size", "16", "--steps", "1", *report],
        "eval-ae": ["eval-ae", models.ae, "--data", tmp, "--size", "16", *report],
        "train-ae": ["train-ae", *TINY_AE, "--out-dir", tmp / "run"],
        "train-ldm": ["train-ldm", *ldm, "--out-dir", tmp / "run"],
    }[command]


VALUES = {  # case -> (command, extra args (the last value wins), message phrase)
    "sample-zero-steps": ("sample", ["--steps", "0"], "must be positive"),
    "sample-negative-steps": ("sample", ["--steps", "-4"], "must be positive"),
    "sample-zero-images": ("sample", ["--n", "0"], "must be positive"),
    "sample-guidance-nan": ("sample", ["--guidance", "nan"], "--guidance"),
    "sample-guidance-inf": ("sample", ["--guidance", "inf"], "--guidance"),
    "sample-negative-guidance": ("sample", ["--guidance", "-1"], "--guidance"),
    "superres-zero-steps": ("superres", ["--steps", "0"], "--steps"),
    "superres-negative-steps": ("superres", ["--steps", "-2"], "--steps"),
    "superres-eta-nan": ("superres", ["--eta", "nan"], "--eta"),
    "superres-strength-nan": ("superres", ["--strength", "nan"], "--strength"),
    "eval-sr-zero-steps": ("eval-sr", ["--steps", "0"], "--steps"),
    "eval-sr-size-not-a-multiple-of-the-scale": ("eval-sr", ["--size", "30"], "not a multiple"),
    "eval-sr-negative-size": ("eval-sr", ["--size", "-8"], "--size"),
    "eval-ae-size-below-the-ssim-window": ("eval-ae", ["--size", "8"], "--size 8"),
    "eval-ae-negative-limit": ("eval-ae", ["--limit", "-1"], "--limit"),
    "train-ae-zero-steps": ("train-ae", ["--max-steps", "0"], "max_steps"),
    "train-ae-size-the-autoencoder-cannot-take": ("train-ae", ["--size", "17"], "not a multiple of f"),
    "train-ldm-negative-steps": ("train-ldm", ["--max-steps", "-1"], "max_steps"),
    "train-ldm-size-the-autoencoder-cannot-take": ("train-ldm", ["--size", "17"], "not a multiple of the autoencoder"),
    "train-ldm-size-the-unet-cannot-take": ("train-ldm", ["--size", "18"], "not a multiple of the UNet"),
}


@pytest.mark.parametrize("case", VALUES)
def test_bad_cli_value_is_a_clear_error(case, models, tmp_path, capsys):
    command, extra, match = VALUES[case]
    _fails_cleanly(capsys, [*_values_args(command, models, tmp_path), *extra], match, tmp_path)


# --------------------------------------------------------------------------------------------
# output paths: checked before the long part, and never a half-written file


def _output_args(option: str, target: Path, models: Models, tmp: Path) -> list[object]:
    image = tmp / "in" / "a.png"
    image.parent.mkdir(exist_ok=True)
    Image.new("RGB", (16, 16), (30, 120, 200)).save(image)
    sample = ["sample", models.ldm, "--n", "1", "--steps", "1"]
    return {
        "sample --out-file": [*sample, "--out-file", target],
        "sample --out-dir": [*sample, "--out-file", tmp / "grid.png", "--out-dir", target],
        "sample --save-tensor": [*sample, "--out-file", tmp / "grid.png", "--save-tensor", target],
        "superres -o": ["superres", image, "--model", models.sr, "--steps", "1", "-o", target],
        "superres --out-dir": ["superres", image, "--model", models.sr, "--steps", "1", "--out-dir", target],
        "reconstruct --out-dir": ["reconstruct", models.ae, image, "--out-dir", target],
        "export": ["export", models.ldm, target],
        "eval-ae --json": ["eval-ae", models.ae, "--data", image.parent, "--size", "0", "--json", target],
        "eval-ae --out-dir": ["eval-ae", models.ae, "--data", image.parent, "--size", "0", "--out-dir", target],
    }[option]


OUTPUTS = [  # (option, where the target is, message phrase)
    ("sample --out-file", "read-only/x.png", "read-only"),
    ("sample --out-file", "a-folder", "it is a folder"),
    ("sample --out-file", "a-file/x.png", "is not a folder"),
    ("sample --out-dir", "read-only/each", "Permission denied"),
    ("sample --out-dir", "a-file", "cannot create output folder"),
    ("sample --save-tensor", "missing/x.pt", "does not exist"),
    ("sample --save-tensor", "read-only/x.pt", "read-only"),
    ("superres -o", "read-only/x.png", "read-only"),
    ("superres --out-dir", "read-only/sub", "Permission denied"),
    ("reconstruct --out-dir", "read-only/rec", "Permission denied"),
    ("export", "read-only/x.safetensors", "read-only"),
    ("export", "missing/x.safetensors", "does not exist"),
    ("eval-ae --json", "missing/r.json", "does not exist"),
    ("eval-ae --json", "read-only/r.json", "read-only"),
    ("eval-ae --out-dir", "read-only/each", "Permission denied"),
]


@pytest.mark.parametrize("option,where,match", OUTPUTS, ids=[f"{o}-{w}" for o, w, _ in OUTPUTS])
def test_unwritable_output_is_a_clear_error(option, where, match, models, tmp_path, readonly, capsys):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("in the way")
    target = tmp_path / where.replace("read-only", readonly.name)
    _fails_cleanly(capsys, _output_args(option, target, models, tmp_path), match, tmp_path)
