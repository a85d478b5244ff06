"""``ldmctl compare``: samplers on one checkpoint, or training configs at one budget, as a report
(Markdown, PNG plots and grids, results.json). See docs/compare.md."""

from __future__ import annotations

import datetime
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ldmctl import __version__
from ldmctl.cli._console import console, err_console, step_progress
from ldmctl.cli._options import DeviceOpt, InceptionOpt, PrecisionOpt, RefLimitOpt, UNetBatchOpt, WeightsOpt, runtime
from ldmctl.cli._vocab import Command, Precision, Preset, Sampler, metrics_spec
from ldmctl.compare.run import SamplersConfig, Setting
from ldmctl.compare.training import TrainingConfig
from ldmctl.errors import ConfigError
from ldmctl.eval.judge import JudgeConfig
from ldmctl.files import check_writable, ensure_folder

app = typer.Typer(
    name="compare",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Compare samplers on one checkpoint, or training configs at one budget: a Markdown "
    "report with PNG plots and sample grids.",
)

MetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metrics",
        "--metric",
        help="auto (default: shapes for text models; fd-cls[,acc] with --classifier; else fid) or fd-cls, acc, fid, "
        "shapes, comma-separated or repeated. The first decides matches.",
    ),
]
RefOpt = Annotated[
    str | None,
    typer.Option(help="Reference images for fd-cls and fid: a folder or builtin:NAME (e.g. builtin:fashion-test)."),
]
ClassifierOpt = Annotated[
    Path | None, typer.Option(help="ldmctl classifier (from train-classifier) for fd-cls and acc.")
]
NOpt = Annotated[int, typer.Option("--n", help="Samples per measurement.")]
SeedOpt = Annotated[
    int, typer.Option(help="Seed of the samples (the same for every setting), the reference subset and the bootstrap.")
]
CompareGuidanceOpt = Annotated[
    float | None, typer.Option(help="Classifier-free guidance scale (default 3 for conditional models, else 1).")
]
BootstrapOpt = Annotated[
    int, typer.Option(help="Bootstrap resamples of the samples for each figure's standard deviation.")
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the results (as in OUT_DIR/results.json) here.")
]
InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        help="An input of the model's conditioners as KEY=VALUE, repeatable, cycled over the samples, as in "
        "`ldmctl sample` (default: the judge's prompts for captions, each conditioner's default otherwise).",
    ),
]

# compare samplers
CheckpointArg = Annotated[Path, typer.Argument(help="LDM checkpoint (.safetensors from train-ldm or export).")]
SamplersOpt = Annotated[str, typer.Option(help="Comma-separated samplers: ddim, plms, dpmpp, ddpm.")]
StepCountsOpt = Annotated[str, typer.Option(help="Comma-separated step counts, each tried with every sampler.")]
ReferenceOpt = Annotated[str, typer.Option(help="The setting the others are matched against, SAMPLER-STEPS.")]
RepeatSeedOpt = Annotated[
    int | None, typer.Option(help="Also draw the reference setting with this seed: checks the noise estimate.")
]
MatchSigmasOpt = Annotated[
    float,
    typer.Option(
        help="A setting matches the reference when not worse by more than this many of the reference's standard "
        "deviations."
    ),
]
SamplersOutDirOpt = Annotated[
    Path, typer.Option("--out-dir", "--out", help="Report folder: report.md, results.json, PNG plots, grids/.")
]
# compare train
AEOpt = Annotated[Path, typer.Option(help="Autoencoder checkpoint from train-ae, shared by every variant.")]
VariantConfigOpt = Annotated[
    list[Path],
    typer.Option(help="A variant: a .toml/.json config file, repeatable. Its file name (without suffix) names it."),
]
VariantPresetOpt = Annotated[Preset, typer.Option(help="Starting configuration of every variant.")]
VariantMaxStepsOpt = Annotated[
    int | None, typer.Option(help="Training steps of every variant (default: each config's).")
]
EvalEveryOpt = Annotated[
    int, typer.Option(help="Steps between evaluations (= checkpoints); 0: each config's train.save_every.")
]
VariantSetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a field in every variant: --set train.batch_size=16")
]
EvalSamplerOpt = Annotated[Sampler, typer.Option(help="Sampler of the evaluations.")]
EvalStepsOpt = Annotated[int, typer.Option(help="Sampling steps of the evaluations.")]
TrainPrecisionOpt = Annotated[
    Precision | None,
    typer.Option(help="train.precision of every variant (default: each config's); the evaluations sample in fp32."),
]
TrainOutDirOpt = Annotated[
    Path,
    typer.Option(
        "--out-dir", "--out", help="Folder: one run folder per variant, report.md, results.json, PNG plots, grids/."
    ),
]


def command_line(ctx: typer.Context) -> str:
    """The command as typed (arguments, and the options given on the command line), for the report."""
    parts = ["ldmctl", *ctx.command_path.split()[1:]]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if p.param_type_name == "argument":
            parts.append(str(value))
            continue
        source = ctx.get_parameter_source(p.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            parts += [p.opts[0], str(v)]
    return shlex.join(parts)


def _about(ctx: typer.Context, device: torch.device, precision: str, **facts: Any) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "command": command_line(ctx),
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "ldmctl": __version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "precision": precision,  # of the sampling that was measured
        **facts,
    }


def _judge_config(
    metric: list[str] | None,
    keys: set[str],
    ref: str | None,
    ref_limit: int,
    classifier: Path | None,
    inception_weights: Path | None,
    bootstrap: int,
    seed: int,
) -> JudgeConfig:
    """What to measure: the ``--metrics`` (``auto`` resolved for a model reading ``keys``) and against what."""
    from ldmctl.eval.judge import resolve_metrics

    metrics = resolve_metrics(metrics_spec(metric), keys=keys, classifier=classifier is not None)
    return JudgeConfig(
        metrics=metrics,
        ref=ref,
        ref_limit=ref_limit,
        classifier=str(classifier) if classifier is not None else None,
        inception_weights=str(inception_weights) if inception_weights is not None else None,
        bootstrap=bootstrap,
        seed=seed,
    )


def _judge(cfg: JudgeConfig, keys: set[str], size: int, n: int, given: set[str], device: torch.device) -> Any:
    """The judge (on ``device``) of N samples of ``size`` px from a model reading ``keys``; ``given``: the
    ``--input`` keys."""
    from ldmctl.eval.judge import Judge

    return Judge.build(cfg, keys=keys, size=size, n=n, given=given, device=device)


def _samplers_config(
    samplers: str, steps: str, seed: int, reference: str, match_sigmas: float, repeat_seed: int | None
) -> SamplersConfig:
    """The grid of settings from the comma-separated ``--samplers`` and ``--steps``, checked."""
    from ldmctl.compare.run import validate_samplers

    names = tuple(s.strip() for s in samplers.split(",") if s.strip())
    cfg = SamplersConfig(
        samplers=names,
        steps=_ints(steps, "--steps"),
        seed=seed,
        reference=reference,
        match_sigmas=match_sigmas,
        repeat_seed=repeat_seed,
    )
    return validate_samplers(cfg)


def _variants(configs: list[Path], preset: str, train: dict[str, Any], sets: list[str] | None) -> list[tuple[str, Any]]:
    """Each config file's train-ldm config with the ``train`` flags, named by the file; checked to be comparable."""
    from ldmctl.compare.training import check_variants
    from ldmctl.train.configure import ldm_config

    variants = [(path.stem, ldm_config(preset, path, {"train": train}, sets or [])) for path in configs]
    check_variants(variants)
    return variants


def _load(ckpt: Path, weights: str, inputs: dict, device: torch.device) -> tuple[Any, set[str], int]:
    """The checkpoint on ``device``, the batch keys its conditioners read and its image side; every input checked."""
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.sampling import sampling_conditions

    model = load_ldm(ckpt, weights=weights, device=device)
    sampling_conditions(model, 1, inputs, {"caption": ["-"]})  # every input readable, before any long step
    keys = {c.input_key for c in model.conditioners.items}
    return model, keys, model.config.latent_size * model.autoencoder.config.downsample_factor


def _variant_keys(variants: list[tuple[str, Any]], inputs: dict) -> set[str]:
    """The batch keys the variants' conditioners read; every ``--input`` key must be one of them."""
    from ldmctl.compare.training import conditioning_readers
    from ldmctl.sampling import check_input_keys

    readers = conditioning_readers(variants[0][1])
    check_input_keys(inputs, readers)  # the values are read at the first measurement
    return set(readers)


def _advancer(progress: Any, task: Any, n: int) -> Callable[[Setting], Callable[[int], None]]:
    """``sample_draw``'s ``progress``: one bar over the n * steps sample-steps of every setting."""
    done = [0]

    def advance(setting: Setting) -> Callable[[int], None]:
        base, done[0] = done[0], done[0] + n * setting.steps
        progress.update(task, description=f"{setting.name} seed {setting.seed}")
        return lambda k: progress.update(task, completed=base + k)

    return advance


def _watcher(progress: Any, task: Any) -> Callable[[str, Any], Any]:
    """``compare_training``'s ``watch``: one bar over the training steps of every variant."""
    from ldmctl.train.loop import Callbacks

    trained = [0]

    def watch(name: str, cfg: Any) -> Callbacks:
        base = trained[0]
        trained[0] += cfg.train.max_steps
        progress.update(task, description=name)
        return Callbacks(
            on_step=lambda step, logs: progress.update(task, completed=base + step), on_message=progress.console.print
        )

    return watch


def _finish(summary: str, out: Path, results: dict[str, Any], json_out: Path | None) -> None:
    """The summary on stderr; the report's path (and the --json copy of the results) on stdout."""
    from ldmctl.eval.report import write_json

    err_console.print(summary, highlight=False)
    console.print(str(out / "report.md"), highlight=False)
    if json_out is not None:
        console.print(str(write_json(results, json_out)), highlight=False)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r}: write comma-separated whole numbers, e.g. 10,20,50") from None


def _prompts(judge: Any) -> dict[str, list[str]] | None:
    """The judge's prompts as the default captions of the samples (None: the model reads none)."""
    return {"caption": judge.prompts} if judge.prompts else None


def _start(out: Path, n: int, batch_size: int, json_out: Path | None) -> None:
    """Checks that need no model, before any long step."""
    from ldmctl.eval.plots import require_matplotlib

    require_matplotlib()
    if n < 2 or batch_size < 1:
        raise ConfigError("--n must be at least 2 and --batch-size positive")
    if json_out is not None:
        check_writable(json_out)
    ensure_folder(out)


@app.command("samplers", cls=Command)
def samplers_command(
    ctx: typer.Context,
    ckpt: CheckpointArg,
    samplers: SamplersOpt = "ddim,plms,dpmpp",
    steps: StepCountsOpt = "10,20,50",
    reference: ReferenceOpt = "ddim-50",
    metric: MetricOpt = None,
    ref: RefOpt = None,
    ref_limit: RefLimitOpt = 0,
    classifier: ClassifierOpt = None,
    inception_weights: InceptionOpt = None,
    n: NOpt = 200,
    seed: SeedOpt = 0,
    repeat_seed: RepeatSeedOpt = None,
    guidance: CompareGuidanceOpt = None,
    input_: InputOpt = None,
    batch_size: UNetBatchOpt = 64,
    weights: WeightsOpt = "ema",
    bootstrap: BootstrapOpt = 200,
    match_sigmas: MatchSigmasOpt = 2.0,
    out: SamplersOutDirOpt = Path("compare-samplers"),
    json_out: JsonOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Sample one checkpoint with several samplers and step counts (same seeds) and report quality vs steps and time."""
    from ldmctl.compare.report import answer
    from ldmctl.compare.run import compare_samplers, parse_setting, sample_draw
    from ldmctl.sampling import check_options, default_guidance, parse_pairs

    cfg = _samplers_config(samplers, steps, seed, reference, match_sigmas, repeat_seed)
    check_options(n, 1, 0.0, batch_size, guidance)
    inputs, dev = parse_pairs(input_), runtime(device, precision)
    _start(out, n, batch_size, json_out)
    model, keys, size = _load(ckpt, weights, inputs, dev)
    judged = _judge_config(metric, keys, ref, ref_limit, classifier, inception_weights, bootstrap, seed)
    judge = _judge(judged, keys, size, n, set(inputs), dev)
    scale = default_guidance(keys, guidance)
    repeats = [parse_setting(reference)] if repeat_seed is not None else []
    total = n * sum(s.steps for s in cfg.settings() + repeats)
    about = _about(ctx, dev, precision, checkpoint=str(ckpt), n=n, guidance=scale, batch_size=batch_size)
    about["weights"] = weights
    with step_progress(total, description="compare") as (progress, task):
        advance = _advancer(progress, task, n)
        draw = sample_draw(
            n, scale, batch_size, inputs, defaults=_prompts(judge), progress=advance, precision=precision
        )
        results = compare_samplers(model, cfg, judge, draw, out, about=about, say=progress.console.print)
    _finish(answer(results).replace("**", ""), out, results, json_out)


@app.command("train", cls=Command)
def train_command(
    ctx: typer.Context,
    ae: AEOpt,
    config: VariantConfigOpt,
    preset: VariantPresetOpt = "small",
    max_steps: VariantMaxStepsOpt = None,
    eval_every: EvalEveryOpt = 0,
    set_: VariantSetOpt = None,
    metric: MetricOpt = None,
    ref: RefOpt = None,
    ref_limit: RefLimitOpt = 0,
    classifier: ClassifierOpt = None,
    inception_weights: InceptionOpt = None,
    n: NOpt = 200,
    sampler: EvalSamplerOpt = "dpmpp",
    sample_steps: EvalStepsOpt = 20,
    seed: SeedOpt = 0,
    guidance: CompareGuidanceOpt = None,
    input_: InputOpt = None,
    batch_size: UNetBatchOpt = 64,
    bootstrap: BootstrapOpt = 200,
    out: TrainOutDirOpt = Path("compare-train"),
    json_out: JsonOpt = None,
    device: DeviceOpt = "auto",
    precision: TrainPrecisionOpt = None,
) -> None:
    """Train several configs with the same budget, measure each at every checkpoint, report quality vs steps and time."""
    from ldmctl.compare.run import sample_draw
    from ldmctl.compare.training import compare_training
    from ldmctl.sampling import default_guidance, parse_pairs

    if sample_steps < 1:
        raise ConfigError(f"--sample-steps must be positive, got {sample_steps}")
    dev = runtime(device, precision)  # fp16 training needs CUDA: checked where each variant trains
    variants = _variants(config, preset, {"max_steps": max_steps, "device": str(dev), "precision": precision}, set_)
    inputs = parse_pairs(input_)
    keys = _variant_keys(variants, inputs)
    _start(out, n, batch_size, json_out)
    judged = _judge_config(metric, keys, ref, ref_limit, classifier, inception_weights, bootstrap, seed)
    judge = _judge(judged, keys, variants[0][1].data.size, n, set(inputs), dev)
    scale = default_guidance(keys, guidance)
    about = _about(ctx, dev, "fp32", ae=str(ae), n=n, guidance=scale, batch_size=batch_size, preset=preset)
    draw = sample_draw(n, scale, batch_size, inputs, defaults=_prompts(judge))
    evaluation = TrainingConfig(Setting(sampler, sample_steps, seed), eval_every, device=str(dev))
    with step_progress(sum(c.train.max_steps for _, c in variants), description="compare train") as (progress, task):
        watch, say = _watcher(progress, task), progress.console.print
        results = compare_training(variants, ae, evaluation, judge, draw, out, about=about, watch=watch, say=say)
    done = sum(1 for v in results["variants"] if v["points"])
    _finish(f"{done} of {len(variants)} variant(s) trained and measured", out, results, json_out)
