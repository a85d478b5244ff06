"""``ldmctl compare``: samplers on one checkpoint, or training configs at one budget, as a report
(Markdown, PNG plots and grids, results.json). See docs/compare.md."""

from __future__ import annotations

import datetime
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from ldmctl import __version__
from ldmctl.files import ensure_folder
from ldmctl.cli._console import console, err_console, step_progress
from ldmctl.errors import ConfigError
from ldmctl.eval.compare import SamplersConfig, Setting, TrainingConfig
from ldmctl.eval.judge import JudgeConfig

app = typer.Typer(name="compare", no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Compare samplers on one checkpoint, or training configs at one budget: a Markdown "
                       "report with PNG plots and sample grids.")

MetricOpt = Annotated[str, typer.Option("--metric", help="auto (shapes for text models; fd-cls[,acc] with --classifier; else fid) or a comma-separated list of fd-cls, acc, fid, shapes. The first decides matches.")]
RefOpt = Annotated[Optional[str], typer.Option(help="Reference images for fd-cls and fid: a folder or builtin:NAME (e.g. builtin:fashion-test).")]
RefLimitOpt = Annotated[int, typer.Option(help="Use at most this many reference images, drawn at random (0: all).")]
ClassifierOpt = Annotated[Optional[Path], typer.Option(help="ldmctl classifier (from train-classifier) for fd-cls and acc.")]
InceptionOpt = Annotated[Optional[Path], typer.Option(help="FID Inception weights (default: $LDMCTL_INCEPTION, then the torch hub cache).")]
NOpt = Annotated[int, typer.Option("--n", help="Samples per measurement.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the samples (the same for every setting), the reference subset and the bootstrap.")]
GuidanceOpt = Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (default 3 for conditional models, else 1).")]
BatchOpt = Annotated[int, typer.Option(help="Images per UNet batch.")]
BootstrapOpt = Annotated[int, typer.Option(help="Bootstrap resamples of the samples for each figure's standard deviation.")]


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
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            parts += [p.opts[0], str(v)]
    return shlex.join(parts)


def _about(ctx: typer.Context, **facts: Any) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"command": command_line(ctx), "date": now.strftime("%Y-%m-%d %H:%M UTC"), "ldmctl": __version__,
            "threads": torch.get_num_threads(), "device": "cpu", **facts}


def _judge_config(metric: str, keys: set[str], **options: Any) -> JudgeConfig:
    from ldmctl.eval.judge import resolve_metrics

    metrics = resolve_metrics(metric, keys=keys, classifier=options["classifier"] is not None)
    paths = {k: str(v) if v is not None else None for k, v in options.items() if k in ("classifier", "inception_weights")}
    return JudgeConfig(metrics=metrics, **{**options, **paths})


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} {text!r}: write comma-separated whole numbers, e.g. 10,20,50") from None


def _drawer(n: int, guidance: float, batch_size: int, prompts: list[str] | None,
            advance: Callable[[str, int, int], Callable[[int], None]]) -> Callable[..., Any]:
    """``draw(model, setting)``: ``ldmctl sample``'s generator for N samples of ``setting``."""
    from ldmctl.cli.sample import generate, sampling_conditions
    from ldmctl.samplers import get_sampler

    def draw(model: Any, setting: Setting) -> Any:
        text = "caption" in {c.input_key for c in model.conditioners.items}
        conditions = sampling_conditions(model, n, None, prompts if text else None)
        return generate(model, get_sampler(setting.sampler), n, steps=setting.steps, seed=setting.seed,
                        conditions=conditions, guidance=guidance, batch_size=batch_size,
                        on_progress=advance(setting.name, setting.seed, n * setting.steps))

    return draw


def _start(out: Path, n: int, batch_size: int) -> None:
    """Checks that need no model, before any long step."""
    from ldmctl.eval.plots import require_matplotlib

    require_matplotlib()
    if n < 2 or batch_size < 1:
        raise ConfigError("--n must be at least 2 and --batch-size positive")
    ensure_folder(out)


@app.command("samplers")
def samplers_command(
    ctx: typer.Context,
    ckpt: Annotated[Path, typer.Argument(help="LDM checkpoint (.safetensors from train-ldm or export).")],
    samplers: Annotated[str, typer.Option(help="Comma-separated samplers: ddim, plms, dpmpp, ddpm.")] = "ddim,plms,dpmpp",
    steps: Annotated[str, typer.Option(help="Comma-separated step counts, each tried with every sampler.")] = "10,20,50",
    reference: Annotated[str, typer.Option(help="The setting the others are matched against, SAMPLER-STEPS.")] = "ddim-50",
    metric: MetricOpt = "auto",
    ref: RefOpt = None,
    ref_limit: RefLimitOpt = 0,
    classifier: ClassifierOpt = None,
    inception_weights: InceptionOpt = None,
    n: NOpt = 200,
    seed: SeedOpt = 0,
    repeat_seed: Annotated[Optional[int], typer.Option(help="Also draw the reference setting with this seed: checks the noise estimate.")] = None,
    guidance: GuidanceOpt = None,
    batch_size: BatchOpt = 64,
    weights: Annotated[str, typer.Option(help="ema (default) or raw UNet weights.")] = "ema",
    bootstrap: BootstrapOpt = 200,
    match_sigmas: Annotated[float, typer.Option(help="A setting matches the reference when not worse by more than this many of the reference's standard deviations.")] = 2.0,
    out: Annotated[Path, typer.Option(help="Report folder: report.md, results.json, PNG plots, grids/.")] = Path("compare-samplers"),
) -> None:
    """Sample one checkpoint with several samplers and step counts (same seeds) and report quality vs steps and time."""
    from ldmctl.cli.sample import check_options, sampling_conditions
    from ldmctl.eval.compare import compare_samplers, parse_setting, validate_samplers
    from ldmctl.eval.judge import Judge
    from ldmctl.diffusion.io import load_ldm

    cfg = validate_samplers(SamplersConfig(samplers=tuple(s.strip() for s in samplers.split(",") if s.strip()),
                                           steps=_ints(steps, "--steps"), seed=seed, reference=reference,
                                           match_sigmas=match_sigmas, repeat_seed=repeat_seed))
    check_options(n, 1, 0.0, batch_size, guidance)
    _start(out, n, batch_size)
    model = load_ldm(ckpt, weights=weights)
    keys = {c.input_key for c in model.conditioners.items}
    sampling_conditions(model, 1, None, ["-"] if "caption" in keys else None)  # a conditioner we cannot feed
    size = model.config.latent_size * model.autoencoder.config.downsample_factor
    jcfg = _judge_config(metric, keys, ref=ref, ref_limit=ref_limit, classifier=classifier,
                         inception_weights=inception_weights, bootstrap=bootstrap, seed=seed)
    judge = Judge.build(jcfg, keys=keys, size=size, n=n)
    scale = guidance if guidance is not None else (3.0 if keys else 1.0)
    repeats = [parse_setting(reference)] if repeat_seed is not None else []
    total = n * sum(s.steps for s in cfg.settings() + repeats)
    about = _about(ctx, checkpoint=str(ckpt), n=n, guidance=scale, batch_size=batch_size, weights=weights)
    with step_progress(total, description="compare") as (progress, task):
        done = [0]

        def advance(name: str, s: int, work: int) -> Callable[[int], None]:
            base, done[0] = done[0], done[0] + work
            progress.update(task, description=f"{name} seed {s}")
            return lambda k: progress.update(task, completed=base + k)

        results = compare_samplers(model, cfg, judge, _drawer(n, scale, batch_size, judge.prompts, advance), out,
                                   about=about, say=progress.console.print)
    from ldmctl.eval.compare_report import answer

    err_console.print(answer(results).replace("**", ""), highlight=False)
    console.print(str(out / "report.md"), highlight=False)


@app.command("train")
def train_command(
    ctx: typer.Context,
    ae: Annotated[Path, typer.Option(help="Autoencoder checkpoint from train-ae, shared by every variant.")],
    config: Annotated[list[Path], typer.Option(help="A variant: a .toml/.json config file, repeatable. Its file name (without suffix) names it.")],
    preset: Annotated[str, typer.Option(help="Starting configuration of every variant: tiny, small or base.")] = "small",
    max_steps: Annotated[Optional[int], typer.Option(help="Training steps of every variant (default: each config's).")] = None,
    eval_every: Annotated[int, typer.Option(help="Steps between evaluations (= checkpoints); 0: each config's train.save_every.")] = 0,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a field in every variant: --set train.batch_size=16")] = None,
    metric: MetricOpt = "auto",
    ref: RefOpt = None,
    ref_limit: RefLimitOpt = 0,
    classifier: ClassifierOpt = None,
    inception_weights: InceptionOpt = None,
    n: NOpt = 200,
    sampler: Annotated[str, typer.Option(help="Sampler of the evaluations.")] = "dpmpp",
    sample_steps: Annotated[int, typer.Option(help="Sampling steps of the evaluations.")] = 20,
    seed: SeedOpt = 0,
    guidance: GuidanceOpt = None,
    batch_size: BatchOpt = 64,
    bootstrap: BootstrapOpt = 200,
    out: Annotated[Path, typer.Option(help="Folder: one run folder per variant, report.md, results.json, PNG plots, grids/.")] = Path("compare-train"),
) -> None:
    """Train several configs with the same budget, measure each at every checkpoint, report quality vs steps and time."""
    from ldmctl.cli._options import resolve_ldm_config
    from ldmctl.eval.compare import check_variants, compare_training, conditioning_keys
    from ldmctl.eval.judge import Judge
    from ldmctl.samplers import get_sampler
    from ldmctl.train.loop import Callbacks

    get_sampler(sampler)
    if sample_steps < 1:
        raise ConfigError(f"--sample-steps must be positive, got {sample_steps}")
    variants = [(path.stem, resolve_ldm_config(preset, path, {"train": {"max_steps": max_steps}}, set_ or []))
                for path in config]
    check_variants(variants)
    _start(out, n, batch_size)
    keys = conditioning_keys(variants[0][1])
    jcfg = _judge_config(metric, keys, ref=ref, ref_limit=ref_limit, classifier=classifier,
                         inception_weights=inception_weights, bootstrap=bootstrap, seed=seed)
    judge = Judge.build(jcfg, keys=keys, size=variants[0][1].data.size, n=n)
    scale = guidance if guidance is not None else (3.0 if keys else 1.0)
    about = _about(ctx, ae=str(ae), n=n, guidance=scale, batch_size=batch_size, preset=preset)
    with step_progress(sum(c.train.max_steps for _, c in variants), description="compare train") as (progress, task):
        trained = [0]

        def watch(name: str, cfg: Any) -> Callbacks:
            base = trained[0]
            trained[0] += cfg.train.max_steps
            progress.update(task, description=name)
            return Callbacks(on_step=lambda step, logs: progress.update(task, completed=base + step),
                             on_message=progress.console.print)

        results = compare_training(variants, ae, TrainingConfig(Setting(sampler, sample_steps, seed), eval_every),
                                   judge, _drawer(n, scale, batch_size, judge.prompts, lambda *a: None), out,
                                   about=about, watch=watch, say=progress.console.print)
    done = sum(1 for v in results["variants"] if v["points"])
    err_console.print(f"{done} of {len(variants)} variant(s) trained and measured", highlight=False)
    console.print(str(out / "report.md"), highlight=False)
