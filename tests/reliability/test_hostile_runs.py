"""The second hostile corpus, part 2 (issue 24): run folders and training health.

A run folder has one writer at a time; ``--resume`` falls back to the newest intact checkpoint;
a start that fails leaves nothing that blocks the rerun; a full disk or a model gone non-finite
stops with one ``error:`` line and exit 1, the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_hostile_inputs import TINY_AE, _run
from test_hostile_inputs_2 import _hashes, refused

RUN = [*TINY_AE[:6], *TINY_AE[8:]]  # the tiny autoencoder of the first corpus, without its --max-steps
assert TINY_AE[6] == "--max-steps"


def _train(out: Path, steps: int, *extra: object) -> list[object]:
    return ["train-ae", *RUN, "--max-steps", steps, "--save-every", "1", "--set", "train.keep_last=3", *extra,
            "--out-dir", out]  # fmt: skip


@pytest.fixture(scope="module")
def run2(tmp_path_factory, run_cli) -> Path:
    """A train-ae run folder with step checkpoints 1 and 2."""
    out = tmp_path_factory.mktemp("runs") / "run"
    run_cli(*_train(out, 2))
    return out


def _copy(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest))


def _pid_of_a_finished_process() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------------------------
# one writer at a time


def test_a_run_locked_by_a_live_process_is_refused(run2, tmp_path, capsys):
    run = _copy(run2, tmp_path / "run")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{sleeper.pid}\n")
        refused(capsys, _train(run, 3, "--resume"), f"process {sleeper.pid}", tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(run2, tmp_path, capsys):
    run = _copy(run2, tmp_path / "run")
    (run / ".lock").write_text(f"{_pid_of_a_finished_process()}\n")
    code, text = _run(capsys, *_train(run, 3, "--resume"))
    assert code == 0 and "stale lock" in text, text
    assert (run / "checkpoints" / "step_0000003.safetensors").is_file() and not (run / ".lock").exists()


def test_a_new_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(f"{sleeper.pid}\n")
        refused(capsys, _train(tmp_path / "run", 1), "in use", tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_new_run_into_a_folder_holding_a_checkpoint_is_refused(run2, tmp_path, capsys):
    """The run's latest model (ae.safetensors) would replace a checkpoint the user keeps there."""
    (tmp_path / "models").mkdir()
    shutil.copyfile(run2 / "ae.safetensors", tmp_path / "models" / "ae.safetensors")
    refused(capsys, _train(tmp_path / "models", 1), "not part of a run", tmp_path)


# --------------------------------------------------------------------------------------------
# resume falls back to the newest intact checkpoint


@pytest.mark.parametrize("damage", ["truncated-weights", "truncated-state", "empty-weights"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(damage, run2, tmp_path, capsys):
    run = _copy(run2, tmp_path / "run")
    newest = run / "checkpoints" / "step_0000002.safetensors"
    target = newest.with_suffix(".state.pt") if damage == "truncated-state" else newest
    raw = target.read_bytes()
    target.write_bytes(b"" if damage == "empty-weights" else raw[: len(raw) // 2])
    code, text = _run(capsys, *_train(run, 3, "--resume"))
    assert code == 0 and "Traceback" not in text, text
    assert "step_0000002" in text and "resumed at step 1" in text, text
    assert (run / "checkpoints" / "step_0000003.safetensors").is_file()


def test_resume_with_no_intact_checkpoint_is_a_clear_error(run2, tmp_path, capsys):
    run = _copy(run2, tmp_path / "run")
    for ckpt in (run / "checkpoints").glob("*.safetensors"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    refused(capsys, _train(run, 3, "--resume"), "no intact checkpoint", tmp_path)


# --------------------------------------------------------------------------------------------
# failed starts, full disks


def test_a_failed_start_leaves_nothing_that_blocks_the_rerun(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    refused(capsys, _train(out, 1, "--data", data, "--size", "16"), "is usable", tmp_path)
    assert not out.exists()
    code, text = _run(capsys, *_train(out, 1))
    assert code == 0, text


def test_resume_of_a_folder_that_does_not_exist_creates_nothing(run2, tmp_path, capsys):
    args = ["train-ldm", "--preset", "tiny", "--ae", run2 / "ae.safetensors", "--data", "builtin:synthetic"]
    refused(capsys, [*args, "--max-steps", "1", "--resume", "--out-dir", tmp_path / "nowhere"], "no run", tmp_path)


def test_a_killed_start_is_accepted_by_the_rerun(tmp_path, capsys):
    """SIGKILL during start-up leaves config.json and a lock of a dead process, no checkpoint."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / ".lock").write_text(f"{_pid_of_a_finished_process()}\n")
    code, text = _run(capsys, *_train(out, 1))
    assert code == 0 and (out / "checkpoints" / "step_0000001.safetensors").is_file(), text


def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(run2, tmp_path, capsys, monkeypatch):
    run = _copy(run2, tmp_path / "run")
    import ldmctl.files

    real = ldmctl.files.os.replace

    def replace(src, dst, *a, **k):
        if "step_0000003" in str(dst):  # the disk fills up as the third checkpoint is written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(ldmctl.files.os, "replace", replace)
    before = _hashes(run)
    code, text = _run(capsys, *_train(run, 3, "--resume"))
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert code == 1 and "Traceback" not in text and len(errors) == 1, text
    assert "No space left on device" in errors[0] and "step_0000003" in errors[0], text
    after = _hashes(run)
    assert {k: after[k] for k in before if k.startswith("checkpoints/")} == {
        k: v for k, v in before.items() if k.startswith("checkpoints/")
    }
    assert not any("step_0000003" in k or ".tmp" in k for k in after), sorted(after)


# --------------------------------------------------------------------------------------------
# training health


def _finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(path).values() if t.is_floating_point())


@pytest.mark.parametrize("lr", ["1e30", "1e38"])
def test_an_exploding_run_stops_with_an_error_and_keeps_good_checkpoints(lr, tmp_path, capsys):
    out = tmp_path / "run"
    code, text = _run(capsys, *_train(out, 3, "--lr", lr))
    assert code == 1 and "Traceback" not in text, text
    assert len([ln for ln in text.splitlines() if ln.startswith("error:")]) == 1 and "not finite" in text, text
    saved = [*(out / "checkpoints").glob("*.safetensors"), *out.glob("*.safetensors")]
    assert all(_finite(p) for p in saved), saved


def test_a_run_that_ends_on_a_nan_loss_is_not_a_success(tmp_path, capsys, monkeypatch):
    """The last step's loss is NaN: the run must not end with exit 0 and that model."""
    from ldmctl.autoencoder.losses import AELoss

    real = AELoss.generator_loss

    def poisoned(self, x, out, *, step, **kw):
        loss, logs = real(self, x, out, step=step, **kw)
        return (loss * float("nan") if step >= 1 else loss), logs

    monkeypatch.setattr(AELoss, "generator_loss", poisoned)
    out = tmp_path / "run"
    code, text = _run(capsys, *_train(out, 2))
    assert code == 1 and "Traceback" not in text and "not finite" in text, text
    assert sorted(p.name for p in (out / "checkpoints").glob("*.safetensors")) == ["step_0000001.safetensors"]


def test_a_full_disk_while_caching_latents_is_a_clear_error_and_leaves_no_run(run2, tmp_path, capsys, monkeypatch):
    import numpy as np

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    args = ["train-ldm", "--preset", "tiny", "--ae", run2 / "ae.safetensors", "--data", "builtin:synthetic"]
    args += ["--max-steps", "1", "--set", "model.unet.attention_levels=[]", "--out-dir", tmp_path / "ldm"]
    refused(capsys, args, "No space left on device", tmp_path)
