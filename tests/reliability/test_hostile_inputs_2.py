"""The second hostile corpus (issue 24, "never lose a user's data"): outputs that would destroy
inputs, values that pass no validator, files that are not regular files, and inputs that would
take unbounded memory. Run folders and training health are in ``test_hostile_runs.py``.

Every refusal goes through ``ldmctl.cli.main`` (the real error boundary) and is checked by
:func:`refused`: exit code 1, exactly one ``error:`` line, no traceback, nothing new on disk,
every file the user had byte-for-byte unchanged, peak memory grown by less than 1 GiB; an alarm
fails any case that runs for a minute (a FIFO read would block forever). Helpers and the tiny trained models come from
the first corpus, ``test_hostile_inputs.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import signal
from pathlib import Path

import pytest
from PIL import Image, ImageFile
from test_hostile_inputs import _config_edit, _fails_cleanly, _run, _values_args, models  # noqa: F401

from ldmctl.config import DataConfig
from ldmctl.data import open_dataset


def _hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``folder`` (FIFOs and links are named, not read)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = p.relative_to(folder).as_posix()
        if p.is_symlink() or (p.exists() and not p.is_file() and not p.is_dir()):
            out[key] = "special"
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys: pytest.CaptureFixture[str], args: list[object], match: str, watch: Path) -> None:
    """Exit 1, one ``error:`` line naming ``match``, no traceback, nothing new under ``watch``,
    every file under it unchanged, and the process's peak memory grown by less than 1 GiB."""
    before, peak = _hashes(watch), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    _fails_cleanly(capsys, args, match, watch)
    assert _hashes(watch) == before
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 1 << 20, "more than 1 GiB allocated"


@pytest.fixture(autouse=True)
def no_hang():
    """A command that blocks (a FIFO opened for reading) fails the test instead of hanging CI."""

    def alarm(*_):
        raise TimeoutError("the command hung")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _image(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (30, 120, 200)).save(path)
    return path


# --------------------------------------------------------------------------------------------
# outputs never destroy inputs


def _outputs_case(case: str, m, tmp: Path) -> tuple[list[object], str]:
    photo = _image(tmp / "in" / "photo.png")
    sample = ["sample", "--n", "1", "--steps", "1"]
    other = tmp / "in" / "other.safetensors"
    other.write_bytes(m.ae.read_bytes())
    fifo, null = tmp / "in" / "pipe.png", tmp / "in" / "null.png"
    os.mkfifo(fifo)
    null.symlink_to(os.devnull)
    _image(tmp / "in" / "photo_x4.png")
    _image(tmp / "in" / "photo_model.png")  # what eval-ae --out-dir would name the model's output of photo.png
    return {
        "sample-out-is-the-checkpoint": ([*sample, m.ldm, "--out", m.ldm], "one of its inputs"),
        "sample-save-tensor-is-the-checkpoint": (
            [*sample, m.ldm, "-o", tmp / "in" / "g.png", "--save-tensor", m.ldm],
            "one of its inputs",
        ),
        "sample-out-is-another-checkpoint": ([*sample, m.ldm, "--out", other], "--overwrite"),
        "sample-out-is-the-init-image": ([*sample, m.ldm, "--init-image", photo, "-o", photo], "one of its inputs"),
        "sample-out-suffix-gif": ([*sample, m.ldm, "-o", tmp / "in" / "result.gif"], "not a format"),
        "sample-out-is-a-fifo": ([*sample, m.ldm, "-o", fifo], "not a regular file"),
        "sample-out-is-a-device-node": ([*sample, m.ldm, "-o", null], "not a regular file"),
        "superres-out-is-the-input": (["superres", photo, "--model", m.sr, "--steps", "1", "-o", photo], "inputs"),
        "superres-out-dir-overwrites-an-input": (
            ["superres", tmp / "in", "--model", m.sr, "--steps", "1", "--out-dir", tmp / "in"],
            "one of its inputs",
        ),
        "superres-old-out-gif-is-not-a-folder": (
            ["superres", photo, "--model", m.sr, "--steps", "1", "--out", tmp / "in" / "result.gif"],
            "not a format",
        ),
        "reconstruct-out-dir-is-the-inputs-folder": (["reconstruct", m.ae, photo, "--out-dir", photo.parent], "inputs"),
        "export-onto-its-own-checkpoint": (["export", m.ldm, m.ldm], "one of its inputs"),
        "export-onto-another-checkpoint": (["export", m.ldm, other], "--overwrite"),
        "eval-ae-out-dir-overwrites-an-input": (
            ["eval-ae", m.ae, "--data", photo.parent, "--size", "16", "--out-dir", photo.parent],
            "one of its inputs",
        ),
        "eval-ae-json-onto-the-checkpoint": (
            ["eval-ae", m.ae, "--data", photo.parent, "--size", "16", "--json", m.ae],
            "one of its inputs",
        ),
    }[case]


OUTPUT_CASES = [
    "sample-out-is-the-checkpoint",
    "sample-save-tensor-is-the-checkpoint",
    "sample-out-is-another-checkpoint",
    "sample-out-is-the-init-image",
    "sample-out-suffix-gif",
    "sample-out-is-a-fifo",
    "sample-out-is-a-device-node",
    "superres-out-is-the-input",
    "superres-out-dir-overwrites-an-input",
    "superres-old-out-gif-is-not-a-folder",
    "reconstruct-out-dir-is-the-inputs-folder",
    "export-onto-its-own-checkpoint",
    "export-onto-another-checkpoint",
    "eval-ae-out-dir-overwrites-an-input",
    "eval-ae-json-onto-the-checkpoint",
]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_output_that_would_destroy_an_input_is_refused(case, models, tmp_path, capsys):  # noqa: F811
    models_copy = _copy_models(models, tmp_path / "m")
    args, match = _outputs_case(case, models_copy, tmp_path)
    refused(capsys, args, match, tmp_path)


def _copy_models(m, root: Path):
    """Copies of the trained models inside the watched folder, so a clobbered one is noticed."""
    root.mkdir()
    copies = {}
    for name in ("ae", "ldm", "sr"):
        copies[name] = root / f"{name}.safetensors"
        copies[name].write_bytes(getattr(m, name).read_bytes())
    return type(m)(m.ae_run, copies["ae"], copies["ldm"], copies["sr"])


def test_inputs_sharing_a_name_get_outputs_of_their_own(models, tmp_path, capsys):  # noqa: F811
    a, b = _image(tmp_path / "x" / "a.png", (16, 16)), _image(tmp_path / "y" / "a.png", (32, 16))
    code, text = _run(capsys, "reconstruct", models.ae, a, b, "--out-dir", tmp_path / "out")
    assert code == 0, text
    outs = sorted((tmp_path / "out").iterdir())
    assert len(outs) == 2 and {Image.open(p).size for p in outs} == {(16, 16), (32, 16)}, outs


def test_overwrite_allows_replacing_an_earlier_output(models, tmp_path, capsys):  # noqa: F811
    other = tmp_path / "old.safetensors"
    other.write_bytes(models.ae.read_bytes())
    assert _run(capsys, "export", models.ldm, other, "--overwrite")[0] == 0
    assert other.read_bytes() != models.ae.read_bytes()


# --------------------------------------------------------------------------------------------
# every value validated once, at the configuration boundary

BAD_VALUES = {  # case -> (command, extra args, message phrase)
    "keep-last-negative": ("train-ae", ["--set", "train.keep_last=-1"], "keep_last"),
    "keep-last-zero": ("train-ldm", ["--set", "train.keep_last=0"], "keep_last"),
    "lr-inf": ("train-ldm", ["--lr", "inf"], "lr"),
    "lr-nan-by-set": ("train-ae", ["--set", "train.lr=NaN"], "lr"),
    "ema-decay-above-one": ("train-ldm", ["--ema-decay", "1.5"], "decay"),
    "grad-accum-zero": ("train-ldm", ["--grad-accum", "0"], "grad_accum"),
    "save-every-negative": ("train-ldm", ["--save-every", "-3"], "save_every"),
    "norm-groups-zero": ("train-ae", ["--set", "model.norm_groups=0"], "norm_groups"),
    "dropout-probability-above-one": ("train-ae", ["--set", "model.dropout=2"], "dropout"),
    "conditioner-dropout-negative": (
        "train-ldm",
        ["--set", 'model.conditioners=[{"name": "class", "dropout": -0.5}]'],
        "dropout",
    ),
    "seed-past-the-generator-range": ("sample", ["--seed", str(2**64)], "--seed"),
    "train-seed-past-the-generator-range": ("train-ae", ["--set", f"train.seed={2**64}"], "seed"),
    "superres-seed-past-the-generator-range": ("superres", ["--seed", str(2**64)], "--seed"),
    "adam-beta-of-one-or-more": ("train-ae", ["--set", "train.adam_betas=[1.5, 0.9]"], "adam_betas"),
    "crop-size-beyond-the-pixel-bound": ("train-ae", ["--set", "data.size=100000"], "max_pixels"),
    "batch-beyond-memory": ("train-ae", ["--set", "train.batch_size=100000000"], "memory"),
    "absurd-model-width": ("train-ae", ["--set", "model.base_channels=1000000"], "memory"),
    "sample-size-beyond-the-pixel-bound": ("sample", ["--height", "65536", "--width", "65536"], "pixels"),
    "outpainting-beyond-the-pixel-bound": ("sample", ["--init-image", "a.png", "--pad", "0,0,0,99999996"], "pixels"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_value_is_refused_at_the_boundary(case, models, tmp_path, capsys):  # noqa: F811
    command, extra, match = BAD_VALUES[case]
    extra = [str(tmp_path / a) if a == "a.png" else a for a in extra]  # the image _values_args writes
    refused(capsys, [*_values_args(command, models, tmp_path), *extra], match, tmp_path)


CONFIG_FILES = {  # case -> (file name, text, message phrase)
    "top-level-list": ("c.json", "[1, 2, 3]", "table"),
    "deeply-nested": ("c.json", "[" * 100_000 + "]" * 100_000, "nested"),
    "nested-table-too-deep": ("c.json", '{"train": ' + '{"x": ' * 200 + "1" + "}" * 201, "nested"),
    "toml-nan": ("c.toml", "[train]\nlr = nan\n", "lr"),
}


@pytest.mark.parametrize("case", CONFIG_FILES)
def test_bad_config_file_is_refused(case, models, tmp_path, capsys):  # noqa: F811
    name, text, match = CONFIG_FILES[case]
    (tmp_path / name).write_text(text)
    refused(capsys, [*_values_args("train-ae", models, tmp_path), "--config", tmp_path / name], match, tmp_path)


STORED_CONFIGS = {  # case -> (command, edit of the stored config, message phrase)
    "ldm-absurd-width": ("sample", lambda c: c["ldm"]["unet"].update(model_channels=10**7), "memory"),
    "ae-absurd-width": ("reconstruct", lambda c: c.update(base_channels=10**7), "memory"),
    "ldm-scale-factor-nan": ("sample", lambda c: c["ldm"].update(scale_factor=float("nan")), "scale_factor"),
    "ae-zero-norm-groups": ("reconstruct", lambda c: c.update(norm_groups=0), "norm_groups"),
}


@pytest.mark.parametrize("case", STORED_CONFIGS)
def test_bad_stored_config_is_refused_before_allocating(case, models, tmp_path, capsys):  # noqa: F811
    command, edit, match = STORED_CONFIGS[case]
    src = models.ldm if command == "sample" else models.ae
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(_config_edit(edit)(src.read_bytes(), tmp_path))
    photo = _image(tmp_path / "in" / "a.png")
    args = {
        "sample": ["sample", ckpt, "--n", "1", "--steps", "1", "-o", tmp_path / "s.png"],
        "reconstruct": ["reconstruct", ckpt, photo, "--out-dir", tmp_path / "out"],
    }[command]
    refused(capsys, args, match, tmp_path)


def test_stored_conditioner_of_absurd_size_is_refused(tmp_path, capsys):
    """A class-conditional fixture checkpoint whose stored conditioner asks for 10^11 classes."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "pre-refactor" / "class.safetensors"
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(_config_edit(lambda c: c["ldm"]["conditioners"][0]["options"].update(num_classes=10**11))(
        fixture.read_bytes(), tmp_path))  # fmt: skip
    refused(capsys, ["sample", ckpt, "--n", "1", "--steps", "1", "-o", tmp_path / "s.png"], "GiB of memory", tmp_path)


# --------------------------------------------------------------------------------------------
# only regular files are opened as data, metadata, checkpoints or configs


def test_fifo_as_metadata_is_refused_not_waited_on(models, tmp_path, capsys):  # noqa: F811
    _image(tmp_path / "data" / "a.png")
    os.mkfifo(tmp_path / "data" / "metadata.jsonl")
    args = [*_values_args("train-ae", models, tmp_path), "--size", "16", "--data", tmp_path / "data"]
    refused(capsys, args, "not a regular file", tmp_path)


@pytest.mark.parametrize("what", ["checkpoint", "config", "image"])
def test_fifo_given_as_a_file_is_refused(what, models, tmp_path, capsys):  # noqa: F811
    fifo = tmp_path / {"checkpoint": "m.safetensors", "config": "c.json", "image": "pipe.png"}[what]
    os.mkfifo(fifo)
    args = {
        "checkpoint": ["sample", fifo, "--n", "1", "--steps", "1", "-o", tmp_path / "s.png"],
        "config": [*_values_args("train-ae", models, tmp_path), "--config", fifo],
        "image": ["reconstruct", models.ae, fifo, "--out-dir", tmp_path / "out"],
    }[what]
    refused(capsys, args, f"{str(fifo)!r} is not a regular file" if what != "image" else "is not a file", tmp_path)


BAD_ROWS = {  # case -> a metadata.jsonl row (as JSON text) naming b.png
    "nul-in-file-name": '{"file_name": "b.png\\u0000.png", "text": "x"}',
    "very-long-file-name": json.dumps({"file_name": "b" * 5000 + ".png", "text": "x"}),
    "control-characters-in-caption": '{"file_name": "b.png", "text": "a \\u001b[31mred\\u0007 cat"}',
    "absurdly-long-caption": json.dumps({"file_name": "b.png", "text": "cat " * 100_000}),
    "deeply-nested-caption": '{"file_name": "b.png", "text": ' + "[" * 50_000 + "]" * 50_000 + "}",
}


BAD_TXT = {  # case -> the text of b.txt, the caption file beside b.png
    "caption-file-with-nul": "a cat\x00\x00",
    "caption-file-of-a-megabyte": "cat " * 250_000,
}


@pytest.mark.parametrize("case", [*BAD_ROWS, *BAD_TXT])
def test_bad_metadata_row_is_skipped_and_counted(case, tmp_path, caplog):
    data = tmp_path / "data"
    _image(data / "a.png")
    _image(data / "b.png")
    if case in BAD_TXT:
        (data / "a.txt").write_text("ok")
        (data / "b.txt").write_text(BAD_TXT[case])
    else:
        (data / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n' + BAD_ROWS[case] + "\n")
    before = _hashes(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ldmctl.data"):
        ds = open_dataset(DataConfig(source=str(data), size=8))
    assert len(ds.skipped) == 1 and ("metadata.jsonl:2" in ds.skipped[0][1] or "b.txt" in ds.skipped[0][1]), ds.skipped
    assert [c for c in (ds[i]["caption"] for i in range(len(ds))) if c] == ["ok"]
    assert "skipped 1 bad files" in ds.summary() and _hashes(tmp_path) == before


# --------------------------------------------------------------------------------------------
# bounded resources


@pytest.fixture
def never_decode(monkeypatch):
    """Fail the test if any image's pixels are decoded: refusals must come from the header."""

    def load(self, *args, **kwargs):
        raise AssertionError(f"decoded {self.size}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def _thin_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (1, 1_000_000)).save(path)  # about 4 KB on disk
    return path


def test_extreme_aspect_ratio_is_refused_from_the_header(models, tmp_path, capsys, never_decode):  # noqa: F811
    png = _thin_png(tmp_path / "in" / "thin.png")
    refused(capsys, ["reconstruct", models.ae, png, "--out-dir", tmp_path / "out"], "aspect ratio", tmp_path)


def test_extreme_aspect_ratio_in_a_data_set_is_skipped_and_counted(tmp_path):
    _image(tmp_path / "good.png")
    _thin_png(tmp_path / "thin.png")
    ds = open_dataset(DataConfig(source=str(tmp_path), size=8))
    assert len(ds) == 1 and len(ds.skipped) == 1 and "aspect ratio" in ds.skipped[0][1]


def test_huge_n_without_an_output_folder_is_refused_at_once(models, tmp_path, capsys):  # noqa: F811
    args = ["sample", models.ldm, "--n", "1000000000", "--steps", "1", "-o", tmp_path / "s.png"]
    refused(capsys, args, "thrown away", tmp_path)


def test_sampling_streams_each_batch_to_disk(models, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Each batch is written before the next is made, and the grid holds at most GRID_BYTES of
    samples: memory does not grow with --n."""
    import ldmctl.cli.sample as sample_cli

    real, seen = sample_cli.generate, []

    def spy(*args, **kwargs):
        for i, chunk in enumerate(real(*args, **kwargs)):
            seen.append(len(list((tmp_path / "each").glob("*.png"))))
            assert seen[-1] == 2 * i, "an earlier batch was not written before the next was made"
            yield chunk

    monkeypatch.setattr(sample_cli, "generate", spy)
    monkeypatch.setattr(sample_cli, "GRID_BYTES", 3 * (3 * 16 * 16 * 4))  # three 16 x 16 float32 samples
    args = ["sample", models.ldm, "--n", "5", "--batch-size", "2", "--steps", "1", "-o", tmp_path / "g.png"]
    code, text = _run(capsys, *args, "--out-dir", tmp_path / "each")
    assert code == 0 and seen == [0, 2, 4], (text, seen)
    assert len(list((tmp_path / "each").glob("*.png"))) == 5
    assert Image.open(tmp_path / "g.png").size == (2 * 18, 2 * 18)  # a 2x2 grid of the first 3 (16 px + border)


def test_evaluation_of_a_large_image_is_resized_to_a_stated_bound(models, tmp_path, capsys, monkeypatch, caplog):  # noqa: F811
    import ldmctl.eval.report

    monkeypatch.setattr(ldmctl.eval.report, "EVAL_MAX_PIXELS", 32 * 32)
    _image(tmp_path / "data" / "big.png", (128, 64))
    report = tmp_path / "r.json"
    with caplog.at_level(logging.WARNING, logger="ldmctl.eval"):
        code, text = _run(capsys, "eval-ae", models.ae, "--data", tmp_path / "data", "--size", "0", "--json", report)
    assert code == 0, text
    assert "128x64 px evaluated resized to 45x22" in caplog.text
    assert json.loads(report.read_text())["n"] == 1
