"""One vocabulary across commands: output names, tile units, --metrics, --json, listed choices,
old spellings that still parse, shell completion (ldmctl/cli/_vocab.py)."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ldmctl import config
from ldmctl.cli import _vocab, app, main
from ldmctl.cli._vocab import OLD_SPELLINGS, metrics_spec, pick_metrics, pixels_to_cells
from ldmctl.errors import ConfigError


def _commands() -> dict[str, typing.Any]:
    """Every leaf command of the app by its full name (``compare samplers``, ``sample``...)."""
    found: dict[str, typing.Any] = {}

    def walk(group: typing.Any, prefix: str) -> None:
        ctx = group.context_class(group, info_name=prefix or "ldmctl")
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            full = f"{prefix} {name}".strip()
            if hasattr(cmd, "list_commands"):
                walk(cmd, full)
            else:
                found[full] = cmd

    walk(typer.main.get_command(app), "")
    return found


COMMANDS = _commands()


def _options(cmd: typing.Any, *, hidden: bool = False) -> list[typing.Any]:
    return [p for p in cmd.params if p.param_type_name == "option" and (hidden or not p.hidden)]


def _shown_names(cmd: typing.Any) -> set[str]:
    return {o for p in _options(cmd) for o in _vocab.shown_opts(p.opts)}


def test_shell_completion_is_on():
    r = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--install-completion" in r.output and "--show-completion" in r.output


def test_shell_completion_offers_current_spellings_and_choices():
    def complete(words: str) -> list[str]:
        env = {
            "_LDMCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": f"ldmctl {words}",
            "COMP_CWORD": str(len(words.split())),
        }
        r = CliRunner().invoke(app, [], env=env, prog_name="ldmctl")
        assert r.exit_code == 0, r.output
        return r.output.split()

    assert {"--out-file", "--out-dir"} <= set(complete("sample --ou")) and "--out" not in complete("sample --ou")
    assert complete("sample --sampler d") == ["ddim", "ddpm", "dpmpp"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_current_spellings_only(name):
    r = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    for old in OLD_SPELLINGS:
        assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", r.output), f"{name} --help shows {old}"
    assert not _shown_names(COMMANDS[name]) & set(OLD_SPELLINGS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_outputs_are_named_by_what_they_are(name):
    for opt in _shown_names(COMMANDS[name]):
        if opt.startswith("--out"):
            assert opt in ("--out-dir", "--out-file"), f"{name}: {opt}"
    for p in _options(COMMANDS[name]):
        if "--out-file" in p.opts:
            assert "-o" in p.opts, f"{name}: -o is the short --out-file"


def _old_and_new(cmd: typing.Any) -> list[tuple[str, str, str]]:
    """(parameter, old spelling, new spelling) for every option that keeps an old second name."""
    return [
        (p.name, old, _vocab.shown_opts(p.opts)[0]) for p in _options(cmd) for old in p.opts if old in OLD_SPELLINGS
    ]


OLD_NEW = [(name, *row) for name, cmd in sorted(COMMANDS.items()) for row in _old_and_new(cmd)]


@pytest.mark.parametrize("name,param,old,new", OLD_NEW, ids=[f"{n} {o}" for n, _, o, _ in OLD_NEW])
def test_an_old_spelling_sets_the_same_option_as_the_new_one(name, param, old, new):
    cmd = COMMANDS[name]
    value = "fid" if "metric" in old else ("16" if old in ("--tile", "--overlap") else "somewhere.png")
    parsed = [
        cmd.make_context(name, [spelling, value], resilient_parsing=True).params[param] for spelling in (old, new)
    ]
    assert parsed[0] == parsed[1] and parsed[0] not in (None, [], ())


def test_every_renamed_command_keeps_its_old_output_spelling():
    kept = {name for name, _, old, _ in OLD_NEW if old == "--out"}
    assert kept == {
        "compare samplers",
        "compare train",
        "demo",
        "eval-ae",
        "eval-sr",
        "reconstruct",
        "sample",
        "train-ae",
        "train-classifier",
        "train-ldm",
    }
    hidden = {p.opts[0] for p in _options(COMMANDS["superres"], hidden=True) if p.hidden}
    assert hidden == {"--out", "--tile", "--overlap"}  # their old meanings differ: hidden options of their own


@pytest.mark.parametrize("name", ["reconstruct", "eval-ae", "superres", "eval-sr"])
def test_tile_sizes_are_pixels_everywhere(name):
    shown = {p.opts[0]: p for p in _options(COMMANDS[name])}
    assert {"--tile-px", "--overlap-px"} <= set(shown)
    assert all("pixels" in shown[o].help for o in ("--tile-px", "--overlap-px"))


def test_metrics_and_json_have_one_spelling():
    with_metrics = {n for n, c in COMMANDS.items() if any("--metrics" in p.opts for p in _options(c))}
    assert with_metrics == {"eval", "eval-ae", "eval-sr", "compare samplers", "compare train"}
    for name in with_metrics:
        (p,) = [p for p in _options(COMMANDS[name]) if "--metrics" in p.opts]
        assert p.multiple and "comma-separated or repeated" in p.help and "auto" in p.help, name
    reporting = {"eval", "eval-ae", "eval-sr", "compare samplers", "compare train", "train-classifier", "demo"}
    assert all("--json" in _shown_names(COMMANDS[n]) for n in reporting)


def test_metrics_spec_joins_repeated_and_comma_separated_values():
    assert metrics_spec(None) == metrics_spec([]) == "auto"
    assert metrics_spec(["fid,kid", " clip ", "fid"]) == "fid,kid,clip"
    assert pick_metrics(["auto"], ("psnr",)) is None
    assert pick_metrics(["ssim", "psnr"], ("psnr", "ssim")) == ("ssim", "psnr")
    with pytest.raises(ConfigError, match=r"unknown \['fid'\]"):
        pick_metrics(["psnr,fid"], ("psnr", "ssim"))


def test_pixels_to_cells():
    assert pixels_to_cells(128, 32, 2, 4) == (64, 16)
    with pytest.raises(ConfigError, match="--tile-px 12 must be a positive multiple of 8 pixels"):
        pixels_to_cells(12, 4, 2, 4)
    with pytest.raises(ConfigError, match="--overlap-px 3"):
        pixels_to_cells(16, 3, 2, 4)
    with pytest.raises(ConfigError, match="--overlap-px 16"):
        pixels_to_cells(16, 16, 2, 4)


def _config_literal(cls_name: str, field: str) -> set[str]:
    return set(typing.get_args(typing.get_type_hints(getattr(config, cls_name))[field]))


@pytest.mark.parametrize(
    "choices,cls_name,field",
    [
        (_vocab.Precision, "LDMTrainConfig", "precision"),
        (_vocab.AEPrecision, "AETrainConfig", "precision"),
        (_vocab.Prediction, "DiffusionConfig", "prediction"),
        (_vocab.Schedule, "DiffusionConfig", "schedule"),
        (_vocab.Task, "LDMTrainingConfig", "task"),
        (_vocab.AEKind, "AutoencoderConfig", "kind"),
        (_vocab.Perceptual, "AELossConfig", "perceptual"),
    ],
)
def test_choices_are_the_configs_own(choices, cls_name, field):
    assert set(typing.get_args(choices)) == _config_literal(cls_name, field)


def test_choices_are_the_librarys_own():
    from ldmctl.device import DEVICES, PRECISIONS, resolve_device
    from ldmctl.samplers import SAMPLERS

    assert set(typing.get_args(_vocab.Sampler)) == set(SAMPLERS)
    assert set(typing.get_args(_vocab.Preset)) == set(config.PRESETS) == set(config.LDM_PRESETS)
    assert set(typing.get_args(_vocab.Precision)) == set(PRECISIONS)
    for device in DEVICES:
        try:
            resolve_device(device.replace(":N", ":0"))
        except ConfigError as err:  # cuda without a GPU: refused for that reason, not as unknown
            assert "unknown" not in str(err)
    with pytest.raises(ConfigError, match="unknown"):
        resolve_device("tpu")


@pytest.mark.parametrize(
    "argv,bad,choice",
    [
        (["train-ldm", "--precision", "fp64"], "fp64", "'fp16'"),
        (["train-ldm", "--schedule", "quadratic"], "quadratic", "'sqrt_linear'"),
        (["train-ldm", "--prediction", "noise"], "noise", "'eps'"),
        (["train-ldm", "--task", "colorize"], "colorize", "'superres'"),  # inpaint is a task now
        (["train-ae", "--kind", "ae"], "ae", "'vq'"),
        (["train-ae", "--precision", "fp16"], "fp16", "'bf16'"),
        (["train-ae", "--device", "tpu"], "tpu", "cuda:N"),
        (["compare", "train", "--ae", "a", "--config", "c", "--sampler", "euler"], "euler", "'dpmpp'"),
        (["superres", "x.png", "--sampler", "euler"], "euler", "'ddim'"),
        (["eval", "x", "--ref", "r", "--weights", "both"], "both", "'ema'"),
    ],
)
def test_a_value_off_the_list_is_a_usage_error_naming_the_choices(argv, bad, choice, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"'{bad}'" in err and choice in err and "Traceback" not in err


def test_choices_are_listed_in_help_and_in_the_reference():
    from ldmctl.cli._reference import cli_reference_markdown

    r = CliRunner().invoke(app, ["train-ldm", "--help"], env={"COLUMNS": "250"})
    assert "fp32|bf16|fp16" in r.output and "linear|sqrt_linear|cosine" in r.output
    assert "One of: `ddim`, `plms`, `ddpm`, `dpmpp`." in cli_reference_markdown(app)


def test_command_functions_stay_under_fifty_lines():
    long = []
    for path in sorted((Path(_vocab.__file__).parent).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 50:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
