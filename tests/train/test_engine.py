"""The training engine on a toy trainer: checkpoints and keep_last, resume from the newest complete
checkpoint, log.jsonl and TensorBoard scalars, previews, the summary, a run without a folder."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from ldmctl.checkpoint import read_checkpoint, save_checkpoint
from ldmctl.errors import CheckpointError
from ldmctl.train import engine
from ldmctl.train.loop import Callbacks


class Toy:
    """A random walk: each step adds batch x N(0, 1) noise drawn from the run's generator."""

    latest = "toy.safetensors"
    preview_name = "walk"

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(0)
        self.w = torch.zeros(3)
        self.step = 0
        self.moves = 0

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        self.w = self.w + batch * torch.randn(3, generator=self.generator)
        self.moves += 1
        return {"loss": float(self.w.abs().sum()), "moves": self.moves}

    def save(self, ckpt: Path) -> dict:
        save_checkpoint(ckpt, {"w": self.w}, kind="toy", config={}, extra={"step": self.step})
        return {"moves": self.moves}

    def restore(self, ckpt: Path, state: dict) -> None:
        self.w = read_checkpoint(ckpt, expect_kind="toy").tensors["w"]
        self.moves = state["moves"]

    def preview(self) -> dict[str, torch.Tensor]:
        return {"w": self.w[None, None, None].clone()}

    def summary_extra(self) -> dict:
        return {"moves": self.moves}


def _batches(start: int):
    return (torch.tensor(float(i + 1)) for i in range(start, 1000))


def _run(toy: Toy, out: Path | None, plan: engine.Plan, callbacks: Callbacks | None = None) -> dict:
    if out is not None:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    return engine.run(toy, _batches(toy.step), plan, out=out, callbacks=callbacks)


def test_checkpoints_keep_last_latest_copy_logs_previews_and_summary(tmp_path):
    saved, images = [], []
    cb = Callbacks(on_save=lambda s, p: saved.append((s, p)), on_images=lambda s, name, t: images.append(name))
    summary = _run(
        Toy(), tmp_path, engine.Plan(max_steps=7, log_every=3, sample_every=4, save_every=2, keep_last=2), cb
    )
    assert [s for s, _ in saved] == [2, 4, 6, 7]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == [
        "step_0000006.safetensors",
        "step_0000006.state.pt",
        "step_0000007.safetensors",
        "step_0000007.state.pt",
    ]
    latest = tmp_path / "toy.safetensors"
    assert latest.read_bytes() == (tmp_path / "checkpoints" / "step_0000007.safetensors").read_bytes()
    state = torch.load(tmp_path / "checkpoints" / "step_0000007.state.pt", weights_only=True)
    assert state["step"] == 7 and state["moves"] == 7 and "generator" in state["rng"]
    assert images == ["walk_0000004", "walk_0000007"]
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 6, 7] and {"loss", "moves", "steps_per_s"} <= set(lines[0])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["steps"] == 7 and summary["interrupted"] is None and summary["moves"] == 7
    assert summary["checkpoint"] == str(latest) and summary["processes"] == 1
    assert list(summary) == [
        "interrupted",
        "steps",
        "seconds",
        "steps_per_s",
        "final",
        "moves",
        "checkpoint",
        "processes",
    ]


def test_resume_takes_the_newest_complete_checkpoint_and_continues_exactly(tmp_path):
    plan = engine.Plan(max_steps=6, save_every=2, keep_last=3)
    full = Toy()
    _run(full, tmp_path / "full", plan)
    part = Toy()
    _run(part, tmp_path / "part", engine.Plan(max_steps=4, save_every=2, keep_last=3))
    (tmp_path / "part" / "checkpoints" / "step_0000004.state.pt").unlink()  # a save cut short
    resumed = Toy()
    engine.resume(resumed, tmp_path / "part")
    assert resumed.step == 2 and resumed.moves == 2
    summary = _run(resumed, tmp_path / "part", plan)
    assert summary["steps"] == 6 and torch.equal(resumed.w, full.w)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        engine.resume(Toy(), tmp_path / "empty")


def test_a_run_without_a_folder_only_steps_and_calls_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    steps = []
    summary = _run(Toy(), None, engine.Plan(max_steps=3), Callbacks(on_step=lambda s, logs: steps.append(s)))
    assert steps == [1, 2, 3] and summary["checkpoint"] is None and summary["steps"] == 3
    assert list(tmp_path.iterdir()) == []


class FakeWriter:
    """Records what a torch.utils.tensorboard SummaryWriter would write."""

    made: ClassVar[list[FakeWriter]] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def test_logs_go_to_tensorboard_when_it_is_installed(tmp_path, monkeypatch):
    FakeWriter.made = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    _run(Toy(), tmp_path, engine.Plan(max_steps=4, log_every=2, save_every=10))
    (writer,) = FakeWriter.made
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.closed
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    expected = [(k, float(v), line["step"]) for line in lines for k, v in line.items() if k != "step"]
    assert writer.scalars == expected
    assert {(tag, step) for tag, _, step in writer.scalars} >= {("loss", 2), ("moves", 4), ("steps_per_s", 4)}


def test_tensorboard_is_skipped_when_it_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    assert engine.tensorboard_writer(tmp_path / "tensorboard") is None
    _run(Toy(), tmp_path, engine.Plan(max_steps=2, log_every=1))
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "tensorboard").exists()


def test_due_every_n_steps_and_at_the_end():
    assert [s for s in range(1, 8) if engine.due(s, 3, 7)] == [3, 6, 7]
    assert [s for s in range(1, 8) if engine.due(s, 0, 7)] == [7]
