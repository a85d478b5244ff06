"""``ldmctl eval``: generative quality (FID, KID, CLIP score; offline FD_cls and accuracy) of a
checkpoint's samples or a folder of images against reference images. See docs/metrics.md."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer
from torch import Tensor

from ldmctl.files import atomic_write, check_writable, ensure_folder
from ldmctl.cli._console import console, err_console, metrics_table, step_progress, to_uint8_image
from ldmctl.cli._vocab import Sampler, Weights, metrics_spec
from ldmctl.config import DataConfig
from ldmctl.data import iter_image_files, load_image, open_dataset
from ldmctl.errors import ConfigError, DataError, LdmctlError
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
from ldmctl.eval.report import write_json
from ldmctl.eval.kid import DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS


def _image_set(source: str, size: int) -> Any:
    """A folder or builtin:NAME as a data set of ``size`` px center crops (short side resized)."""
    return open_dataset(DataConfig(source=source, size=size, crop="center", resize=True, flip=False))


def _folder_size(folder: Path) -> int:
    files = iter_image_files(folder)
    if not files:
        raise DataError(f"no images in {str(folder)!r}")
    return min(load_image(files[0]).size)


def _problems(metrics: str, *, inception_weights: Path | None, classifier: Path | None,
              clip_weights: Path | None, clip_model: str, labelled: bool, prompts: bool) -> tuple[dict, Extractors]:
    """Load the extractors the metrics may use; map each metric to None or why it cannot run."""
    from ldmctl.eval.classifier import load_classifier

    wanted = set(metrics.split(",")) if metrics != "auto" else {"fid", "kid", "clip", "fd-cls", "acc"}
    ex, problems = Extractors(), {}
    if wanted & {"fid", "kid"}:
        from ldmctl.eval.inception import load_inception

        try:
            ex.inception = load_inception(inception_weights)
        except LdmctlError as err:
            problems["fid"] = problems["kid"] = err
    if classifier is not None:
        ex.classifier = load_classifier(classifier)
    else:
        problems["fd-cls"] = problems["acc"] = ConfigError(
            "FD_cls and accuracy need --classifier CKPT", hint="train one: ldmctl train-classifier --data REF --out-file CKPT")
    if ex.classifier is not None and not labelled:
        problems["acc"] = ConfigError("accuracy needs class-labelled samples: a class-conditional checkpoint, "
                                      "or a folder whose class sub-folders are named as the reference's")
    if not prompts:
        problems["clip"] = ConfigError("the CLIP score needs prompts: --prompt, a text-conditional checkpoint "
                                       "with a captioned --ref, or a folder of captioned images")
    elif "clip" in wanted:
        from ldmctl.eval.clip import load_clip

        try:
            ex.clip = load_clip(clip_weights, clip_model)
        except LdmctlError as err:
            problems["clip"] = err
    return problems, ex


def _class_names(dataset: Any) -> list[str]:
    return list(getattr(dataset, "class_names", []) or [])


def _only(ex: Extractors, chosen: list[str]) -> Extractors:
    """The extractors the chosen metrics use."""
    return Extractors(inception=ex.inception if {"fid", "kid"} & set(chosen) else None,
                      classifier=ex.classifier if {"fd-cls", "acc"} & set(chosen) else None,
                      clip=ex.clip if "clip" in chosen else None)


def _first_caption(dataset: Any) -> bool:
    return len(dataset) > 0 and bool(dataset[0].get("caption"))


@dataclass
class _Samples:
    """The images to judge: how many, whether they carry class labels / prompts, and their batches."""

    size: int  # side in px of the images
    labelled: bool
    has_prompts: bool
    batches: Callable[[list[str]], tuple[Iterator[Batch], int]]  # (reference captions) -> batches, count
    info: dict[str, Any]
    needs_captions: bool = False  # a text-conditional model: prompts, or the reference's captions


def _from_checkpoint(path: Path, opts: dict[str, Any]) -> _Samples:
    """N samples of an LDM checkpoint, drawn as ``sample`` draws them (same options, same seed).

    ``--input`` values feed the model's conditioners; a text-conditional model's prompts are
    ``--prompt`` (or ``--input caption=...``), else the reference's captions."""
    from ldmctl.samplers import get_sampler
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.sampling import default_guidance, generate, sampling_conditions

    model = load_ldm(path, weights=opts["weights"])
    size = model.config.latent_size * model.autoencoder.config.downsample_factor
    keys = {c.input_key for c in model.conditioners.items}
    inputs, prompt = opts["inputs"], opts["prompt"]
    text_model = "caption" in keys and not inputs.get("caption")  # prompts still to choose
    fn, n = get_sampler(opts["sampler"]), opts["n"]
    sampling_conditions(model, 1, inputs, {"caption": ["-"]})  # every input readable, before any long step

    def batches(ref_captions: list[str]) -> tuple[Iterator[Batch], int]:
        prompts = prompt or (ref_captions if text_model else None)
        if text_model and not prompts:
            raise ConfigError("this model is text-conditional: give --prompt, or a --ref with captions")
        conditions = sampling_conditions(model, n, inputs, {"caption": prompts} if prompts else None)
        info["guidance"] = scale = default_guidance(conditions, opts["guidance"])
        chunks = generate(model, fn, n, steps=opts["steps"], eta=opts["eta"], seed=opts["seed"], conditions=conditions,
                          guidance=scale, batch_size=opts["batch_size"], negative_prompt=opts["negative_prompt"])
        return _quantized(chunks, prompts, opts["out_dir"]), n

    info = {k: opts[k] for k in ("sampler", "steps", "eta", "seed", "n", "weights")}
    if inputs:
        info["inputs"] = {k: list(v) for k, v in inputs.items()}
    return _Samples(size, "label" in keys, bool(prompt) or "caption" in keys, batches, info, text_model)


def _quantized(chunks: Iterator[tuple[Tensor, dict]], prompts: list[str] | None, out_dir: Path | None) -> Iterator[Batch]:
    """Samples rounded to 8 bits, as the PNGs ``sample`` writes (and written to ``out_dir``)."""
    done = 0
    for images, batch in chunks:
        images = torch.round((images.float().clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
        size = images.shape[0]
        texts = batch.get("caption") or ([prompts[(done + i) % len(prompts)] for i in range(size)] if prompts else None)
        if out_dir is not None:
            for i, img in enumerate(images):
                atomic_write(out_dir / f"{done + i:05d}.png", lambda tmp, im=img: to_uint8_image(im).save(tmp, format="PNG"))
        done += size
        yield Batch(images, batch.get("label"), texts)


def _from_folder(folder: Path, size: int, ref_names: list[str], prompt: list[str] | None) -> _Samples:
    """Every image of a folder; class sub-folders named as the reference's classes give labels."""
    dataset = _image_set(str(folder), size)
    names = list(getattr(dataset, "class_names", []) or [])
    mapping = torch.tensor([ref_names.index(c) if c in ref_names else -1 for c in names] + [-1])

    def batches(_: list[str]) -> tuple[Iterator[Batch], int]:
        def relabelled() -> Iterator[Batch]:
            done = 0
            for b in dataset_batches(dataset, list(range(len(dataset)))):
                k = b.images.shape[0]
                texts = [prompt[(done + i) % len(prompt)] for i in range(k)] if prompt else b.prompts
                done += k
                yield Batch(b.images, mapping[b.labels], texts)  # label -1 picks the trailing -1

        return relabelled(), len(dataset)

    return _Samples(size, bool(set(names) & set(ref_names)),
                    bool(prompt) or _first_caption(dataset), batches, {"images": len(dataset)})


def _collect(title: str, total: int, batches: Iterator[Batch], ex: Extractors, clip: bool = False) -> Collected:
    with step_progress(total, description=title) as (progress, task):
        return collect(batches, ex, clip=clip, on_batch=lambda k: progress.advance(task, k))


def _print(report: dict[str, Any], title: str, json_out: Path | None) -> None:
    m = report["metrics"]
    rows = [{"metric": k, "value": v, "meaning": report["descriptions"].get(k, "")} for k, v in m.items()
            if k != "kid_std"]
    for row in rows:
        if row["metric"] == "kid":
            row["value"] = f"{m['kid']:.4g} ± {m['kid_std']:.2g}"
    console.print(metrics_table(title, rows, ["metric", "value", "meaning"]))
    if report.get("per_class"):
        console.print(metrics_table("per class (FD_cls, not FID)", report["per_class"], ["class", "n", "fd_cls", "acc"]))
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


def _sources(source: Path, ref: str, size: int, opts: dict[str, Any]) -> tuple[_Samples, Any]:
    """The images to judge (a checkpoint's samples or a folder's images) and the reference set."""
    prompt, inputs = opts["prompt"], opts["inputs"]
    if source.is_file():
        samples = _from_checkpoint(source, opts)
        reference = _image_set(ref, size or samples.size)
        if samples.needs_captions and not prompt and not _first_caption(reference):
            raise ConfigError("this model is text-conditional: give --prompt, or a --ref with captions")
    elif source.is_dir():
        if inputs:
            raise ConfigError("--input feeds a checkpoint's conditioners; a folder of images has none to feed")
        side = size or _folder_size(source)
        reference = _image_set(ref, side)
        samples = _from_folder(source, side, _class_names(reference), prompt)
    else:
        raise ConfigError(f"{str(source)!r} is neither a checkpoint file nor a folder of images")
    return samples, reference


def _measure(samples: _Samples, reference: Any, metrics: str, title: str, ref: str, *, ref_limit: int, seed: int,
             kid_subsets: int, kid_subset_size: int, **extractors: Any) -> dict[str, Any]:
    """Choose the metrics (``metrics``: auto or a comma-separated list), embed both sets, report."""
    problems, ex = _problems(metrics, labelled=samples.labelled, prompts=samples.has_prompts, **extractors)
    chosen, skipped = choose_metrics(metrics, problems)
    for name, why in skipped.items():
        err_console.print(f"[dim]{name} skipped: {why}[/]", highlight=False)
    use = _only(ex, chosen)
    indices = pick_indices(len(reference), ref_limit, seed)
    ref_set = _collect(f"reference {ref}", len(indices), dataset_batches(reference, indices),
                       Extractors(use.inception, use.classifier))
    batches, total = samples.batches(ref_set.prompts)
    gen_set = _collect(title, total, batches, use, clip="clip" in chosen)
    report = generative_report(gen_set, ref_set, chosen, class_names=_class_names(reference), kid_subsets=kid_subsets,
                               kid_subset_size=kid_subset_size, seed=seed)
    return {**report, "skipped": skipped}


def command(
    source: Annotated[Path, typer.Argument(help="LDM checkpoint (.safetensors; --n images are sampled from it) or a folder of images.")],
    ref: Annotated[str, typer.Option(help="Reference images: a folder or builtin:NAME (e.g. builtin:digits-holdout).")],
    metrics: Annotated[Optional[list[str]], typer.Option("--metrics", help="auto (default: every metric computable on this machine) or fid, kid, clip, fd-cls, acc, comma-separated or repeated.")] = None,
    classifier: Annotated[Optional[Path], typer.Option(help="ldmctl classifier (from train-classifier): the offline fd-cls and acc.")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option(help="FID Inception weights (default: $LDMCTL_INCEPTION, then the torch hub cache).")] = None,
    clip_weights: Annotated[Optional[Path], typer.Option(help="open_clip weights file or folder (default: $LDMCTL_CLIP, then the Hugging Face cache).")] = None,
    clip_model: Annotated[str, typer.Option(help="open_clip architecture[:pretrained tag].")] = DEFAULT_MODEL,
    n: Annotated[int, typer.Option("--n", help="Images to sample from a checkpoint.")] = 1000,
    sampler: Annotated[Sampler, typer.Option(help="dpmpp: DPM-Solver++ 2M.")] = "ddim",
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 50,
    eta: Annotated[float, typer.Option(help="DDIM stochasticity (0: deterministic).")] = 0.0,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (1 = none; default 3 for conditional models).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the samples, the reference subset and the KID subsets.")] = 0,
    prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt(s), repeatable, cycled over the images (default: the captions of --ref for text-conditional models, the images' own captions for folders).")] = None,
    input_: Annotated[Optional[list[str]], typer.Option("--input", help="Checkpoints: an input of the model's conditioners as KEY=VALUE, repeatable, cycled over the samples, as in `ldmctl sample` (e.g. --input label=3).")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Prompt for the unconditional branch of guidance.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per UNet batch.")] = 64,
    weights: Annotated[Weights, typer.Option(help="The EMA or the raw UNet weights.")] = "ema",
    size: Annotated[int, typer.Option(help="Side in px of the reference (and folder) images: short side resized, center crop; 0: the samples' size.")] = 0,
    ref_limit: Annotated[int, typer.Option(help="Use at most this many reference images, drawn at random (0: all).")] = 0,
    kid_subsets: Annotated[int, typer.Option(help="KID: number of random subsets.")] = DEFAULT_SUBSETS,
    kid_subset_size: Annotated[int, typer.Option(help="KID: subset size (clamped to the smaller set).")] = DEFAULT_SUBSET_SIZE,
    out_dir: Annotated[Optional[Path], typer.Option(help="Also write each sampled image as a PNG in this folder.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Score generated images against reference images: FID, KID, CLIP score, offline FD_cls and accuracy.

    FID, KID and CLIP need their pretrained weights on this machine; FD_cls and accuracy need a
    classifier from train-classifier. --metrics auto computes every metric that can run here."""
    from ldmctl.sampling import check_options, parse_pairs

    check_options(n, steps, eta, batch_size, guidance)
    _check_outputs(ref_limit, size, out_dir, json_out)
    opts = dict(weights=weights, prompt=prompt, inputs=parse_pairs(input_), sampler=sampler, n=n, steps=steps, eta=eta,
                seed=seed, guidance=guidance, batch_size=batch_size, negative_prompt=negative_prompt, out_dir=out_dir)
    samples, reference = _sources(source, ref, size, opts)
    report = _measure(samples, reference, metrics_spec(metrics), f"samples {source.name}", ref, ref_limit=ref_limit,
                      seed=seed, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                      inception_weights=inception_weights, classifier=classifier, clip_weights=clip_weights,
                      clip_model=clip_model)
    report.update(source=str(source), reference=ref, size=samples.size,
                  classifier=str(classifier) if classifier else None, **samples.info)
    _print(report, f"eval: {source.name} vs {ref}", json_out)
