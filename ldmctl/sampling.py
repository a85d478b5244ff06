"""Sampling a latent diffusion model: its conditioners' inputs from command-line values, then images.

This is the inference pipeline behind ``ldmctl sample``, ``eval``, ``compare`` and ``demo``:

1. :func:`check_options` refuses sampler options that cannot work, before anything is loaded;
2. :func:`sampling_conditions` builds the batch entries the model's conditioners read, for ``n``
   samples: each key from the values the user gave (``--input KEY=VALUE``, several values cycled
   over the samples), else from the conditioner's :meth:`~ldmctl.conditioning.Conditioner.default_inputs`.
   The conditioner that reads a key parses its values (``parse_input``) and joins them
   (``collate_inputs``), so a third-party conditioner is sampled exactly like a built-in one;
3. :func:`generate` draws the samples batch by batch, classifier-free guidance wrapped around the
   model function from outside (:func:`~ldmctl.samplers.guidance.cfg_model_fn`).

Keys the model derives itself (a super-resolution model's ``cond_latent``) are not inputs: the
user gives what they are derived from. ``--prompt`` and ``--label`` are the friendly spellings of
``--input caption=...`` and ``--input label=...`` (:data:`SPELLINGS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ldmctl.conditioning.base import Conditioner
from ldmctl.device import autocast, module_device
from ldmctl.errors import ConfigError, InputError, LdmctlError
from ldmctl.samplers.guidance import cfg_model_fn

SPELLINGS = {"caption": "--prompt", "label": "--label"}  # friendly CLI spellings of built-in keys


def check_options(n: int, steps: int, eta: float, batch_size: int, guidance: float | None) -> None:
    """Refuse sampler options that cannot work, before any long step."""
    if n < 1 or steps < 1 or batch_size < 1:
        raise ConfigError("--n, --steps and --batch-size must be positive")
    if not (math.isfinite(eta) and eta >= 0):
        raise ConfigError(f"--eta must be a finite number >= 0, got {eta}")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ConfigError(f"--guidance must be a finite number >= 0, got {guidance}")


def parse_pairs(pairs: Iterable[str] | None, **spelled: Sequence[Any] | None) -> dict[str, list[str]]:
    """``["label=3", "label=5", "caption=a cat"]`` -> ``{"label": ["3", "5"], "caption": ["a cat"]}``.

    ``spelled`` holds the values of the friendly spellings by key (``caption=prompts``,
    ``label=labels``); they come first, then the ``--input`` values of the same key.
    """
    out: dict[str, list[str]] = {k: [str(v) for v in vals] for k, vals in spelled.items() if vals}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(
                f"--input {pair!r}: write KEY=VALUE", hint='e.g. --input label=3 or --input caption="a cat"'
            )
        out.setdefault(key.strip(), []).append(value)
    return out


def input_readers(model: Any) -> dict[str, Conditioner]:
    """The keys a user may give for ``model``, each with the conditioner that parses its values.

    The keys are the model's data keys (:meth:`~ldmctl.diffusion.ldm.LatentDiffusion.batch_keys`):
    what its conditioners read, a key the model derives itself replaced by what it is derived
    from. A key is parsed by the first conditioner (in spec order) that reads it, else by the first
    that reads a key derived from it (``latent-concat`` reads the low-res image its latent is made of).
    """
    task = getattr(model, "task", None)
    derived = task.derived_keys() if task is not None else frozenset()
    items = list(model.conditioners.items)
    readers: dict[str, Conditioner] = {}
    for key in model.batch_keys():
        direct = [c for c in items if c.input_key == key]
        via = [c for c in items if c.input_key in derived]
        if direct or via:
            readers[key] = (direct or via)[0]
    return readers


def describe_inputs(readers: Mapping[str, Conditioner]) -> str:
    """``"caption (text-crossattn: a prompt), label (class: a class index 0..9)"``."""
    return ", ".join(f"{k} ({c.name}: {c.describe_input()})" for k, c in readers.items()) or "none"


def check_input_keys(given: Iterable[str], reads: Mapping[str, str]) -> None:
    """InputError unless every given key is read by the model (``reads``: key -> a description)."""
    unknown = [k for k in given if k not in reads]
    if not unknown:
        return
    key = unknown[0]
    spelled = f"{SPELLINGS[key]} (--input {key}=...)" if key in SPELLINGS else f"--input {key}=..."
    if not reads:
        raise InputError(f"{spelled} was given, but this model is unconditional: it reads no inputs")
    listing = ", ".join(f"{k} ({v})" for k, v in reads.items())
    raise InputError(
        f"{spelled} was given, but no conditioner of this model reads {key!r}; it reads: {listing}",
        hint="ldmctl plugins lists each conditioner's input key",
    )


def _parse(c: Conditioner, key: str, text: str) -> Any:
    try:
        return c.parse_input(text)
    except (LdmctlError, ValueError) as err:
        hint = getattr(err, "hint", None) or f"{key} is {c.describe_input()}"
        raise InputError(f"the {c.name} conditioner cannot read --input {key}={text!r}: {err}", hint=hint) from None


def _collate(c: Conditioner, key: str, items: list[Any]) -> Any:
    try:
        return c.collate_inputs(items)
    except (LdmctlError, ValueError) as err:
        raise InputError(
            f"the {c.name} conditioner cannot join the values of {key!r}: {err}", hint=getattr(err, "hint", None)
        ) from None


def _required(c: Conditioner, key: str) -> InputError:
    friendly = f"{SPELLINGS[key]} or " if key in SPELLINGS else ""
    return InputError(
        f"this model's {c.name} conditioner reads {key!r} and has no default: give {friendly}--input {key}=VALUE",
        hint=f"{key} is {c.describe_input()}",
    )


def sampling_conditions(
    model: Any,
    n: int,
    inputs: Mapping[str, Sequence[str]] | None = None,
    defaults: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """The batch entries the model's conditioners read, for ``n`` samples (empty if unconditional).

    ``inputs`` maps a key to command-line values, parsed by the conditioner that reads the key and
    cycled over the samples. A key without values takes ``defaults[key]`` (items, e.g. a reference's
    captions, used only when the model reads that key), else the conditioner's ``default_inputs``;
    InputError when there is none, or when a given key is not read by the model.
    """
    inputs, defaults = inputs or {}, defaults or {}
    readers = input_readers(model)
    check_input_keys(inputs, {k: f"{c.name}: {c.describe_input()}" for k, c in readers.items()})
    out: dict[str, Any] = {}
    for key, c in readers.items():
        if inputs.get(key):
            parsed = {text: _parse(c, key, text) for text in dict.fromkeys(inputs[key])}
            items = [parsed[text] for text in inputs[key]]
        else:
            items = list(defaults[key]) if defaults.get(key) else c.default_inputs(n)
        if not items:
            raise _required(c, key)
        out[key] = _collate(c, key, [items[i % len(items)] for i in range(n)])
    return out


def default_guidance(conditions: Collection[str], guidance: float | None) -> float:
    """``guidance``, or 3 when ``conditions`` (a conditions dict or the input keys) is not empty, else 1 (none)."""
    return guidance if guidance is not None else (3.0 if conditions else 1.0)


def generate(
    model: Any,
    sampler_fn: Callable[..., torch.Tensor],
    n: int,
    *,
    steps: int,
    eta: float = 0.0,
    seed: int = 0,
    conditions: Mapping[str, Any] | None = None,
    guidance: float = 1.0,
    batch_size: int = 64,
    negative_prompt: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    precision: str = "fp32",
    latent_hw: tuple[int, int] | None = None,
    edit: Any = None,
    expert: tuple[Any, int] | None = None,
) -> Iterator[tuple[torch.Tensor, dict]]:
    """Yield ``(images (B, 3, H, W) in [-1, 1], that batch's conditions)`` for ``n`` samples.

    One generator seeded with ``seed`` draws every batch in turn, so the samples depend on
    ``seed`` and ``batch_size`` only. ``on_progress(done)`` counts sample-steps (of ``n * steps``).
    ``negative_prompt`` replaces the empty prompt in the unconditional branch of guidance.
    The model runs where its weights are, under the autocast of ``precision``; the generator is
    a CPU one on every device (the same noise for a seed); images come back as float32 on the CPU.
    ``latent_hw`` (:func:`ldmctl.editing.latent_grid`) samples on another grid; ``edit`` (a peer's
    :class:`ldmctl.editing.Edit`, duck-typed) edits its image on its grid. Both set batch ``latent_hw``.
    ``expert = (high, t)``: the LDM ``high`` (:func:`check_expert`) denoises timesteps >= t.
    """
    conditions = conditions or {}
    device = module_device(model.unet)
    g = torch.Generator().manual_seed(seed)
    hw = edit.latent_hw if edit is not None else latent_hw
    runs = steps if edit is None else edit.steps_run(sampler_fn, model.schedule.num_timesteps, steps)
    for start in range(0, n, batch_size):
        done, size = start * runs, min(batch_size, n - start)
        batch = {k: v[start : start + size] for k, v in conditions.items()}
        sized = batch if hw is None else {**batch, "latent_hw": hw}
        inputs = model.derived_inputs(_to_device(sized, device))  # e.g. the latent of a low-res image
        callback = None if on_progress is None else (lambda i, total, z, d=done: on_progress(d + (i + 1) * z.shape[0]))
        model_fn = _batch_fn(model, expert, inputs, size, guidance, negative_prompt, precision) if conditions else None
        with torch.no_grad(), autocast(precision, device):
            run = dict(steps=steps, eta=eta, generator=g, model_fn=model_fn, callback=callback)
            if edit is None:
                z = model.sample_latents(sampler_fn, size, latent_hw=hw, **run)
            else:
                z = edit.latents(model, sampler_fn, size, inputs=inputs, **run)
            images = model.decode(model.from_target(z, inputs))
        images = images.float().cpu()
        yield (images if edit is None else edit.paste_back(images)), batch


def _batch_fn(model: Any, expert: tuple[Any, int] | None, inputs: Mapping[str, Any], *args: Any) -> Any:
    """The guided model function of one batch, switched to ``expert`` at its timestep when given
    (``args``: size, guidance, negative prompt, precision, as :func:`_guided` takes them)."""
    low = _guided(model, inputs, *args)
    if expert is None:
        return low
    return switched(_guided(expert[0], expert[0].derived_inputs(inputs), *args), low, expert[1])


def _guided(
    model: Any, inputs: Mapping[str, Any], size: int, guidance: float, negative_prompt: str | None, precision: str
) -> Any:
    """The model function of one batch under classifier-free guidance; ``negative_prompt`` replaces
    the empty prompt in the unconditional branch.

    The condition is encoded in the caller's grad mode, as it always was: under ``no_grad`` torch's
    nn.TransformerEncoder takes a fast path that differs in the last bits, and old checkpoints must
    keep sampling bit-identically."""
    with autocast(precision, module_device(model.unet)):
        cond = model.cond(inputs)
        negative = {"caption": [negative_prompt] * size} if negative_prompt is not None else {}
        keep = getattr(getattr(model, "task", None), "uncond_inputs", None)  # inputs that are not conditions
        if keep is not None:
            negative.update(keep(inputs))
        uncond = model.conditioners.null(size, like=cond, negative=negative or None)
    return cfg_model_fn(model.unet, cond, uncond, guidance)


def switched(high: Callable, low: Callable, switch_t: int) -> Callable:
    """A model function that calls ``high`` at timesteps >= ``switch_t`` and ``low`` below (the
    samplers give one timestep to a whole batch)."""
    return lambda z_t, t: high(z_t, t) if int(t.reshape(-1)[0]) >= switch_t else low(z_t, t)


def check_expert(model: Any, expert: Any, switch_t: int, conditions: Collection[str]) -> None:
    """Refuse a high-noise expert that cannot share ``model``'s sampling chain: it must be conditional
    on the same inputs, and have the same noise schedule, prediction, latent and autoencoder."""
    if not conditions:
        raise ConfigError("--expert needs a conditional model (its steps are guided by the same conditions)")
    if not 0 < switch_t < model.schedule.num_timesteps:
        raise ConfigError(f"--expert-from {switch_t}: choose a timestep in 1..{model.schedule.num_timesteps - 1}")
    a, b = model.config, expert.config
    same = (
        a.diffusion.schedule == b.diffusion.schedule
        and a.diffusion.timesteps == b.diffusion.timesteps
        and (a.diffusion.linear_start, a.diffusion.linear_end) == (b.diffusion.linear_start, b.diffusion.linear_end)
        and a.diffusion.prediction == b.diffusion.prediction
        and model.latent_shape == expert.latent_shape
    )
    if not same:
        raise ConfigError("--expert: its noise schedule, prediction or latent differ from the model's")
    mine, theirs = model.autoencoder.state_dict(), expert.autoencoder.state_dict()
    if (
        a.scale_factor != b.scale_factor
        or mine.keys() != theirs.keys()
        or any(not torch.equal(v.float(), theirs[k].float()) for k, v in mine.items())
    ):
        raise ConfigError("--expert: it was trained on another autoencoder (the latents would not match)")
    missing = set(conditions) - {c.input_key for c in expert.conditioners.items}
    if missing:
        raise ConfigError(f"--expert does not read {sorted(missing)}, which the model is given")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors on ``device`` (lists of prompts and the like as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


__all__ = [
    "SPELLINGS",
    "check_expert",
    "check_input_keys",
    "check_options",
    "default_guidance",
    "describe_inputs",
    "generate",
    "input_readers",
    "parse_pairs",
    "sampling_conditions",
    "switched",
]
