"""What ``ldmctl eval`` judges: a checkpoint's samples (drawn as ``ldmctl sample`` draws them) or
a folder's images, and the reference images they are judged against."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldmctl.cli._console import to_uint8_image
from ldmctl.config import DataConfig
from ldmctl.data import iter_image_files, load_image, open_dataset
from ldmctl.errors import ConfigError, DataError
from ldmctl.eval.generative import Batch, dataset_batches
from ldmctl.files import atomic_write


@dataclass(frozen=True)
class Draw:
    """How a checkpoint's samples are drawn: the options of ``ldmctl sample``, and where to keep them."""

    n: int
    sampler: str
    steps: int
    eta: float
    seed: int
    guidance: float | None
    batch_size: int
    weights: str
    prompt: list[str] | None
    inputs: Mapping[str, list[str]]  # --input values by key
    negative_prompt: str | None
    out_dir: Path | None  # also write each sample here as a PNG
    device: torch.device  # where the model runs
    precision: str  # its autocast: fp32, bf16 or fp16


def image_set(source: str, size: int) -> Any:
    """A folder or builtin:NAME as a data set of ``size`` px center crops (short side resized)."""
    return open_dataset(DataConfig(source=source, size=size, crop="center", resize=True, flip=False))


def _folder_size(folder: Path) -> int:
    files = iter_image_files(folder)
    if not files:
        raise DataError(f"no images in {str(folder)!r}")
    return min(load_image(files[0]).size)


def class_names(dataset: Any) -> list[str]:
    return list(getattr(dataset, "class_names", []) or [])


def _first_caption(dataset: Any) -> bool:
    return len(dataset) > 0 and bool(dataset[0].get("caption"))


@dataclass
class Samples:
    """The images to judge: how many, whether they carry class labels / prompts, and their batches."""

    size: int  # side in px of the images
    labelled: bool
    has_prompts: bool
    batches: Callable[[list[str]], tuple[Iterator[Batch], int]]  # (reference captions) -> batches, count
    info: dict[str, Any]
    needs_captions: bool = False  # a text-conditional model: prompts, or the reference's captions


def _from_checkpoint(path: Path, draw: Draw) -> Samples:
    """N samples of an LDM checkpoint, drawn as ``sample`` draws them (same options, same seed).

    ``--input`` values feed the model's conditioners; a text-conditional model's prompts are
    ``--prompt`` (or ``--input caption=...``), else the reference's captions."""
    from ldmctl.diffusion.io import load_ldm
    from ldmctl.samplers import get_sampler
    from ldmctl.sampling import default_guidance, generate, sampling_conditions

    model = load_ldm(path, weights=draw.weights, device=draw.device)
    size = model.config.latent_size * model.autoencoder.config.downsample_factor
    keys = {c.input_key for c in model.conditioners.items}
    inputs, prompt = draw.inputs, draw.prompt
    text_model = "caption" in keys and not inputs.get("caption")  # prompts still to choose
    fn, n = get_sampler(draw.sampler), draw.n
    sampling_conditions(model, 1, inputs, {"caption": ["-"]})  # every input readable, before any long step

    def batches(ref_captions: list[str]) -> tuple[Iterator[Batch], int]:
        prompts = prompt or (ref_captions if text_model else None)
        if text_model and not prompts:
            raise ConfigError("this model is text-conditional: give --prompt, or a --ref with captions")
        conditions = sampling_conditions(model, n, inputs, {"caption": prompts} if prompts else None)
        info["guidance"] = scale = default_guidance(conditions, draw.guidance)
        chunks = generate(
            model,
            fn,
            n,
            steps=draw.steps,
            eta=draw.eta,
            seed=draw.seed,
            conditions=conditions,
            guidance=scale,
            batch_size=draw.batch_size,
            negative_prompt=draw.negative_prompt,
            precision=draw.precision,
        )
        return _quantized(chunks, prompts, draw.out_dir), n

    info = {k: getattr(draw, k) for k in ("sampler", "steps", "eta", "seed", "n", "weights")}
    if inputs:
        info["inputs"] = {k: list(v) for k, v in inputs.items()}
    return Samples(size, "label" in keys, bool(prompt) or "caption" in keys, batches, info, text_model)


def _quantized(
    chunks: Iterator[tuple[Tensor, dict]], prompts: list[str] | None, out_dir: Path | None
) -> Iterator[Batch]:
    """Samples rounded to 8 bits, as the PNGs ``sample`` writes (and written to ``out_dir``)."""
    done = 0
    for images, batch in chunks:
        images = torch.round((images.float().clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
        size = images.shape[0]
        texts = batch.get("caption") or ([prompts[(done + i) % len(prompts)] for i in range(size)] if prompts else None)
        if out_dir is not None:
            for i, img in enumerate(images):
                atomic_write(
                    out_dir / f"{done + i:05d}.png", lambda tmp, im=img: to_uint8_image(im).save(tmp, format="PNG")
                )
        done += size
        yield Batch(images, batch.get("label"), texts)


def _from_folder(folder: Path, size: int, ref_names: list[str], prompt: list[str] | None) -> Samples:
    """Every image of a folder; class sub-folders named as the reference's classes give labels."""
    dataset = image_set(str(folder), size)
    names = class_names(dataset)
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

    return Samples(
        size,
        bool(set(names) & set(ref_names)),
        bool(prompt) or _first_caption(dataset),
        batches,
        {"images": len(dataset)},
    )


def samples_and_reference(source: Path, ref: str, size: int, draw: Draw) -> tuple[Samples, Any]:
    """The images to judge (a checkpoint's samples or a folder's images) and the reference set."""
    prompt, inputs = draw.prompt, draw.inputs
    if source.is_file():
        samples = _from_checkpoint(source, draw)
        reference = image_set(ref, size or samples.size)
        if samples.needs_captions and not prompt and not _first_caption(reference):
            raise ConfigError("this model is text-conditional: give --prompt, or a --ref with captions")
    elif source.is_dir():
        if inputs:
            raise ConfigError("--input feeds a checkpoint's conditioners; a folder of images has none to feed")
        side = size or _folder_size(source)
        reference = image_set(ref, side)
        samples = _from_folder(source, side, class_names(reference), prompt)
    else:
        raise ConfigError(f"{str(source)!r} is neither a checkpoint file nor a folder of images")
    return samples, reference
