"""Every command that runs a model takes ``--device`` and ``--precision``: a device this machine
lacks is one ``error:`` line and exit 1 (never a traceback), a misspelt one a usage error, and the
JSON reports say where the model ran and in which precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer

from ldmctl.cli import app, main
from ldmctl.device import mps_available

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "pre-refactor"
MODEL_FREE = {"plugins", "export", "convert", "lora merge"}  # list plugins; rewrite tensors: no network runs
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
no_accelerator = pytest.mark.skipif(torch.cuda.is_available() or mps_available(), reason="auto would pick a GPU")


def _commands(group=None, prefix=()) -> dict[str, object]:
    """Every command of the app by its full name (``compare samplers``), sub-groups flattened."""
    group = group or typer.main.get_command(app)
    ctx = group.context_class(group, info_name="ldmctl")
    found = {}
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if hasattr(cmd, "list_commands"):
            found.update(_commands(cmd, (*prefix, name)))
        else:
            found[" ".join((*prefix, name))] = cmd
    return found


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in getattr(p, "opts", [])}


def test_every_command_that_runs_a_model_takes_device_and_precision():
    commands = _commands()
    assert MODEL_FREE < set(commands) and len(commands) > len(MODEL_FREE) + 10
    missing = {name: sorted({"--device", "--precision"} - _options(cmd)) for name, cmd in commands.items()}
    missing = {name: opts for name, opts in missing.items() if opts and name not in MODEL_FREE}
    assert not missing, f"commands without --device / --precision: {missing}"


def _argv(tmp_path: Path) -> dict[str, list[str]]:
    """Arguments that get each command as far as choosing its device (inputs are checked after it)."""
    ae, lr = str(FIX / "ae.safetensors"), str(FIX / "lr.png")
    return {
        "sample": ["sample", str(FIX / "uncond.safetensors"), "--out-file", str(tmp_path / "g.png")],
        "superres": ["superres", lr, "--model", str(FIX / "sr.safetensors"), "--out-dir", str(tmp_path)],
        "eval": ["eval", str(FIX / "uncond.safetensors"), "--ref", "builtin:synthetic"],
        "eval-ae": ["eval-ae", ae, "--data", "builtin:synthetic"],
        "eval-sr": ["eval-sr", "--model", str(FIX / "sr.safetensors")],
        "reconstruct": ["reconstruct", ae, lr, "--out-dir", str(tmp_path)],
        "compare samplers": ["compare", "samplers", str(FIX / "class.safetensors"), "--out-dir", str(tmp_path)],
        "compare train": ["compare", "train", "--ae", ae, "--config", str(tmp_path / "v.toml")],
        "demo": ["demo", "--out-dir", str(tmp_path / "demo")],
        "train-ae": ["train-ae", "--preset", "tiny", "--data", "builtin:synthetic", "--perceptual", "none"]
        + ["--out-dir", str(tmp_path / "ae")],
        "train-ldm": ["train-ldm", "--preset", "tiny", "--ae", ae, "--data", "builtin:synthetic"]
        + ["--out-dir", str(tmp_path / "ldm")],
        "train-lora": ["train-lora", str(FIX / "crossattn.safetensors"), "--data", "builtin:synthetic"]
        + ["--out-dir", str(tmp_path / "lora")],
        "train-classifier": ["train-classifier", "--data", "builtin:synthetic", "--out-file", str(tmp_path / "c.pt")],
    }


def test_the_device_arguments_cover_every_model_command(tmp_path):
    assert set(_argv(tmp_path)) == set(_commands()) - MODEL_FREE


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@no_cuda
@pytest.mark.parametrize("command", sorted(_argv(Path("."))))
def test_cuda_without_a_gpu_is_a_clear_error_for_every_command(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is written in the source tree, even by mistake
    assert _exit_code([*_argv(tmp_path)[command], "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "error: --device cuda: no CUDA GPU is visible on this machine" in err
    assert "hint: use --device auto" in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("command", ["sample", "eval-ae", "train-ldm"])
def test_a_misspelt_device_is_a_usage_error_listing_the_spellings(command, tmp_path, capsys):
    assert _exit_code([*_argv(tmp_path)[command], "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'gpu'" in err and "cuda:N" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["sample", "reconstruct", "train-ldm"])
def test_fp16_on_the_cpu_is_a_clear_error(command, tmp_path, capsys):
    assert _exit_code([*_argv(tmp_path)[command], "--device", "cpu", "--precision", "fp16"]) == 1
    err = capsys.readouterr().err
    assert "fp16 needs a" in err and "bf16" in err and "Traceback" not in err


def test_sample_in_bf16_on_the_cpu_is_close_to_fp32(tmp_path):
    """Through the CLI, as tests/test_device.py checks the library (the same tolerance, for the
    same reason: bf16 rounds to 2^-9 relative; a broken autocast moves images by order 1)."""
    got = {}
    for precision in ("fp32", "bf16"):
        argv = _argv(tmp_path)["sample"] + ["--n", "4", "--steps", "4", "--device", "cpu", "--precision", precision]
        assert _exit_code([*argv, "--save-tensor", str(tmp_path / f"{precision}.pt")]) == 0
        got[precision] = torch.load(tmp_path / f"{precision}.pt", weights_only=True)
    diff = (got["fp32"] - got["bf16"]).abs()
    assert got["bf16"].dtype is torch.float32 and not torch.equal(got["fp32"], got["bf16"])
    assert diff.max() <= 0.1 and diff.mean() <= 0.01, (diff.max(), diff.mean())


@no_accelerator
def test_json_reports_say_where_the_model_ran(tmp_path):
    out = tmp_path / "r.json"
    argv = _argv(tmp_path)["eval-ae"] + ["--size", "16", "--limit", "2", "--metrics", "psnr", "--json", str(out)]
    assert _exit_code(argv) == 0  # --device auto: the CPU here
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["precision"] == "fp32"
    assert _exit_code([*argv, "--precision", "bf16"]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["precision"] == "bf16"
