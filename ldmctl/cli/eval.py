"""``ldmctl eval``: generative quality (FID, KID, CLIP score; offline FD_cls and accuracy) of a
checkpoint's samples or a folder of images against reference images. See docs/metrics.md."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ldmctl.cli._console import console, err_console, metrics_table, step_progress
from ldmctl.cli._eval_sources import Draw, Samples, class_names, samples_and_reference
from ldmctl.cli._options import (
    DeviceOpt,
    EtaOpt,
    GuidanceOpt,
    InceptionOpt,
    JsonReportOpt,
    PrecisionOpt,
    RefLimitOpt,
    SamplerOpt,
    StepsOpt,
    UNetBatchOpt,
    WeightsOpt,
    options_of,
    runtime,
)
from ldmctl.cli._vocab import metrics_spec
from ldmctl.errors import ConfigError, LdmctlError
from ldmctl.eval.clip import DEFAULT_MODEL
from ldmctl.eval.generative import (
    Batch,
    Collected,
    Extractors,
    choose_metrics,
    collect,
    dataset_batches,
    generative_report,
    pick_indices,
)
from ldmctl.eval.kid import DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS
from ldmctl.eval.report import write_json
from ldmctl.files import check_writable, ensure_folder

SourceArg = Annotated[
    Path, typer.Argument(help="LDM checkpoint (.safetensors; --n images are sampled from it) or a folder of images.")
]
RefOpt = Annotated[str, typer.Option(help="Reference images: a folder or builtin:NAME (e.g. builtin:digits-holdout).")]
MetricsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--metrics",
        help="auto (default: every metric computable on this machine) or fid, kid, clip, fd-cls, acc, "
        "comma-separated or repeated.",
    ),
]
ClassifierOpt = Annotated[
    Path | None, typer.Option(help="ldmctl classifier (from train-classifier): the offline fd-cls and acc.")
]
ClipWeightsOpt = Annotated[
    Path | None,
    typer.Option(help="open_clip weights file or folder (default: $LDMCTL_CLIP, then the Hugging Face cache)."),
]
ClipModelOpt = Annotated[str, typer.Option(help="open_clip architecture[:pretrained tag].")]
NOpt = Annotated[int, typer.Option("--n", help="Images to sample from a checkpoint.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the samples, the reference subset and the KID subsets.")]
PromptOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Prompt(s), repeatable, cycled over the images (default: the captions of --ref for text-conditional "
        "models, the images' own captions for folders)."
    ),
]
InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        help="Checkpoints: an input of the model's conditioners as KEY=VALUE, repeatable, cycled over the samples, "
        "as in `ldmctl sample` (e.g. --input label=3).",
    ),
]
NegativePromptOpt = Annotated[str | None, typer.Option(help="Prompt for the unconditional branch of guidance.")]
SizeOpt = Annotated[
    int,
    typer.Option(
        help="Side in px of the reference (and folder) images: short side resized, center crop; 0: the samples' size."
    ),
]
KidSubsetsOpt = Annotated[int, typer.Option(help="KID: number of random subsets.")]
KidSubsetSizeOpt = Annotated[int, typer.Option(help="KID: subset size (clamped to the smaller set).")]
OutDirOpt = Annotated[Path | None, typer.Option(help="Also write each sampled image as a PNG in this folder.")]


@dataclass(frozen=True)
class _Measure:
    """What to measure and against what: the options of ``eval`` past the samples' own."""

    metrics: list[str] | None  # --metrics as given (auto when None)
    ref: str
    ref_limit: int
    seed: int
    kid_subsets: int
    kid_subset_size: int
    classifier: Path | None
    inception_weights: Path | None
    clip_weights: Path | None
    clip_model: str
    device: Any  # torch.device of the feature extractors (they compute in float32)


def _problems(metrics: str, m: _Measure, *, labelled: bool, prompts: bool) -> tuple[dict, Extractors]:
    """Load the extractors the metrics may use; map each metric to None or why it cannot run."""
    from ldmctl.eval.classifier import load_classifier

    wanted = set(metrics.split(",")) if metrics != "auto" else {"fid", "kid", "clip", "fd-cls", "acc"}
    ex, problems = Extractors(), {}
    if wanted & {"fid", "kid"}:
        from ldmctl.eval.inception import load_inception

        try:
            ex.inception = load_inception(m.inception_weights)
        except LdmctlError as err:
            problems["fid"] = problems["kid"] = err
    if m.classifier is not None:
        ex.classifier = load_classifier(m.classifier)
    else:
        problems["fd-cls"] = problems["acc"] = ConfigError(
            "FD_cls and accuracy need --classifier CKPT",
            hint="train one: ldmctl train-classifier --data REF --out-file CKPT",
        )
    if ex.classifier is not None and not labelled:
        problems["acc"] = ConfigError(
            "accuracy needs class-labelled samples: a class-conditional checkpoint, "
            "or a folder whose class sub-folders are named as the reference's"
        )
    if not prompts:
        problems["clip"] = ConfigError(
            "the CLIP score needs prompts: --prompt, a text-conditional checkpoint "
            "with a captioned --ref, or a folder of captioned images"
        )
    elif "clip" in wanted:
        from ldmctl.eval.clip import load_clip

        try:
            ex.clip = load_clip(m.clip_weights, m.clip_model)
        except LdmctlError as err:
            problems["clip"] = err
    return problems, ex.to(m.device)


def _only(ex: Extractors, chosen: list[str]) -> Extractors:
    """The extractors the chosen metrics use."""
    return Extractors(
        inception=ex.inception if {"fid", "kid"} & set(chosen) else None,
        classifier=ex.classifier if {"fd-cls", "acc"} & set(chosen) else None,
        clip=ex.clip if "clip" in chosen else None,
    )


def _collect(title: str, total: int, batches: Iterator[Batch], ex: Extractors, clip: bool = False) -> Collected:
    with step_progress(total, description=title) as (progress, task):
        return collect(batches, ex, clip=clip, on_batch=lambda k: progress.advance(task, k))


def _print(report: dict[str, Any], title: str, json_out: Path | None) -> None:
    m = report["metrics"]
    rows = [
        {"metric": k, "value": v, "meaning": report["descriptions"].get(k, "")} for k, v in m.items() if k != "kid_std"
    ]
    for row in rows:
        if row["metric"] == "kid":
            row["value"] = f"{m['kid']:.4g} ± {m['kid_std']:.2g}"
    console.print(metrics_table(title, rows, ["metric", "value", "meaning"]))
    if report.get("per_class"):
        console.print(
            metrics_table("per class (FD_cls, not FID)", report["per_class"], ["class", "n", "fd_cls", "acc"])
        )
    if json_out is not None:
        write_json(report, json_out)
        console.print(str(json_out), highlight=False)


def _check_outputs(ref_limit: int, size: int, out_dir: Path | None, json_out: Path | None) -> None:
    """Refuse bad counts and unwritable outputs before any long step."""
    if json_out is not None:
        check_writable(json_out)
    if ref_limit < 0 or size < 0:
        raise ConfigError("--ref-limit and --size must be >= 0")
    if out_dir is not None:
        ensure_folder(out_dir)


def _measure(samples: Samples, reference: Any, m: _Measure, title: str) -> dict[str, Any]:
    """Choose the metrics (``--metrics``: auto or a list), embed both sets, report."""
    metrics = metrics_spec(m.metrics)
    problems, ex = _problems(metrics, m, labelled=samples.labelled, prompts=samples.has_prompts)
    chosen, skipped = choose_metrics(metrics, problems)
    for name, why in skipped.items():
        err_console.print(f"[dim]{name} skipped: {why}[/]", highlight=False)
    use = _only(ex, chosen)
    indices = pick_indices(len(reference), m.ref_limit, m.seed)
    ref_batches = dataset_batches(reference, indices)
    ref_set = _collect(f"reference {m.ref}", len(indices), ref_batches, Extractors(use.inception, use.classifier))
    batches, total = samples.batches(ref_set.prompts)
    gen_set = _collect(title, total, batches, use, clip="clip" in chosen)
    report = generative_report(
        gen_set,
        ref_set,
        chosen,
        class_names=class_names(reference),
        kid_subsets=m.kid_subsets,
        kid_subset_size=m.kid_subset_size,
        seed=m.seed,
    )
    return {**report, "skipped": skipped}


def command(
    ctx: typer.Context,
    source: SourceArg,
    ref: RefOpt,
    metrics: MetricsOpt = None,
    classifier: ClassifierOpt = None,
    inception_weights: InceptionOpt = None,
    clip_weights: ClipWeightsOpt = None,
    clip_model: ClipModelOpt = DEFAULT_MODEL,
    n: NOpt = 1000,
    sampler: SamplerOpt = "ddim",
    steps: StepsOpt = 50,
    eta: EtaOpt = 0.0,
    guidance: GuidanceOpt = None,
    seed: SeedOpt = 0,
    prompt: PromptOpt = None,
    input_: InputOpt = None,
    negative_prompt: NegativePromptOpt = None,
    batch_size: UNetBatchOpt = 64,
    weights: WeightsOpt = "ema",
    size: SizeOpt = 0,
    ref_limit: RefLimitOpt = 0,
    kid_subsets: KidSubsetsOpt = DEFAULT_SUBSETS,
    kid_subset_size: KidSubsetSizeOpt = DEFAULT_SUBSET_SIZE,
    out_dir: OutDirOpt = None,
    json_out: JsonReportOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Score generated images against reference images: FID, KID, CLIP score, offline FD_cls and accuracy.

    FID, KID and CLIP need their pretrained weights on this machine; FD_cls and accuracy need a
    classifier from train-classifier. --metrics auto computes every metric that can run here."""
    from ldmctl.sampling import check_options, parse_pairs

    check_options(n, steps, eta, batch_size, guidance)
    dev = runtime(device, precision)
    _check_outputs(ref_limit, size, out_dir, json_out)
    draw = options_of(Draw, ctx.params, inputs=parse_pairs(input_), device=dev)
    samples, reference = samples_and_reference(source, ref, size, draw)
    report = _measure(samples, reference, options_of(_Measure, ctx.params, device=dev), f"samples {source.name}")
    about = {"source": str(source), "reference": ref, "size": samples.size, "device": str(dev)}
    about["precision"] = precision if source.is_file() else None  # a folder's images were not drawn here
    report.update(about, classifier=str(classifier) if classifier else None, **samples.info)
    _print(report, f"eval: {source.name} vs {ref}", json_out)
