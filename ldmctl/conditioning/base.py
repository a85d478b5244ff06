"""The conditioning contract: :class:`Cond` (what the UNet reads) and :class:`Conditioner` (plugins).

The UNet reads the fields of a :class:`Cond` and nothing else, so it never knows which mechanism
(or plugin) produced them:

* ``concat``  (B, Cc, h, w): joined to z_t on the channel axis (the UNet is built with
  ``UNetConfig.concat_channels = Cc``);
* ``add``     (B, D_add): projected to the timestep-embedding width and added to it
  (``UNetConfig.add_dim = D_add``);
* ``context`` (B, L, D_ctx): keys and values of the cross-attention in every SpatialTransformer
  (``UNetConfig.context_dim = D_ctx``); ``context_mask`` (B, L) bool marks real tokens;
* ``tokens``  (B, M, D_tok): joined in front of the image tokens for joint self-attention in every
  SpatialTransformer (``UNetConfig.token_dim = D_tok``); ``tokens_mask`` (B, M) bool.

A :class:`Conditioner` declares its ``kind`` (which field it fills), its options as a frozen
dataclass ``Config``, the batch key it reads, its output width, and a ``null`` output for "no
condition" (classifier-free guidance). Several conditioners of one kind are joined: concat and
add outputs on the feature axis, context and token sequences on the sequence axis.

At sample time a conditioner also says how its input is given on the command line (``ldmctl
sample --input KEY=VALUE``): :meth:`Conditioner.parse_input` reads one value into one item,
:meth:`Conditioner.collate_inputs` joins the items of a batch, :meth:`Conditioner.default_inputs`
gives the items used when the user gives none (or None: the input is required) and
:meth:`Conditioner.describe_input` says in a few words what a value is. The defaults suit a text
input; a conditioner reading anything else overrides :meth:`~Conditioner.parse_input`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ldmctl.errors import InputError

CondKind = Literal["concat", "add", "crossattn", "tokens"]
KINDS: tuple[str, ...] = ("concat", "add", "crossattn", "tokens")


@dataclass
class Cond:
    """The conditioning inputs of one UNet call; every field is optional."""

    concat: Tensor | None = None
    add: Tensor | None = None
    context: Tensor | None = None
    context_mask: Tensor | None = None
    tokens: Tensor | None = None
    tokens_mask: Tensor | None = None


@dataclass(frozen=True)
class LatentSpec:
    """What a conditioner may know about the model it feeds."""

    channels: int  # latent channels of z_t
    size: int  # latent side (h = w) at training resolution
    factor: int  # autoencoder downsampling factor f (pixels per latent cell)


@dataclass
class CondOutput:
    """A conditioner's output: a tensor and, for sequences, which positions are real (B, L) bool."""

    value: Tensor
    mask: Tensor | None = None


class Conditioner(nn.Module, ABC):
    """Base class of every conditioning mechanism, built-in or third-party.

    Subclasses set the class attributes, take ``(config, latent)`` in ``__init__`` and implement
    :meth:`out_dim`, :meth:`forward` and :meth:`null`. ``forward(batch)`` reads
    ``batch[input_key]`` and returns a :class:`CondOutput` whose value is (B, out_dim, h, w) for
    concat, (B, out_dim) for add and (B, L, out_dim) for crossattn/tokens.
    """

    name: ClassVar[str]
    aliases: ClassVar[
        tuple[str, ...]
    ] = ()  # earlier names, still accepted (checkpoints keep the name they were saved with)
    kind: ClassVar[CondKind]
    Config: ClassVar[type]
    input_key: ClassVar[str]

    def __init__(self, config: Any, latent: LatentSpec) -> None:
        super().__init__()
        self.config = config
        self.latent = latent

    @property
    @abstractmethod
    def out_dim(self) -> int:
        """Channels (concat) or feature width (add, crossattn, tokens)."""

    @abstractmethod
    def forward(self, batch: Mapping[str, Any]) -> CondOutput:
        """Encode ``batch[input_key]`` for the UNet."""

    @abstractmethod
    def null(self, batch_size: int, device: torch.device | None = None) -> CondOutput:
        """The "no condition" output used for classifier-free guidance."""

    # -- sample time: how a user gives batch[input_key] (``ldmctl sample --input KEY=VALUE``) --

    def parse_input(self, text: str) -> Any:
        """Read one command-line value into one item of ``batch[input_key]`` (default: the text itself).

        Raise :class:`~ldmctl.errors.InputError` (or ValueError) for a value this conditioner cannot
        read; the sampler adds the key and this conditioner's name to the message.
        """
        return text

    def collate_inputs(self, items: list[Any]) -> Any:
        """Join the items of one batch (one per sample) into the value :meth:`forward` reads.

        Default (:func:`collate_items`): a list of strings, a stacked tensor of tensors, a tensor of
        numbers. Whatever it returns is sliced into sampling batches (``value[start:stop]``).
        """
        return collate_items(items)

    def default_inputs(self, n: int) -> list[Any] | None:
        """Items to use when the user gives none, cycled over the ``n`` samples; None: the input is required."""
        return None

    def describe_input(self) -> str:
        """What one command-line value is, in a few words (for help and error messages)."""
        return "text"

    @classmethod
    def configure(cls, config: Any, dataset: Any) -> Any:
        """Fill options that depend on the training data (e.g. the number of classes); default: as is."""
        return config

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")


def collate_items(items: list[Any]) -> Any:
    """The default collation of sample-time items: a list of strings, a stacked tensor of (equal-shape)
    tensors, a tensor of numbers (int64 for whole numbers, float32 otherwise); any other list as is."""
    if items and all(isinstance(x, Tensor) for x in items):
        shapes = sorted({tuple(x.shape) for x in items})
        if len(shapes) > 1:
            raise InputError(
                f"the values have different shapes {shapes}; one batch needs one shape", hint="give images of one size"
            )
        return torch.stack(items)
    if items and all(isinstance(x, (bool, int, float)) for x in items):
        whole = all(isinstance(x, (bool, int)) for x in items)
        return torch.tensor(items, dtype=torch.int64 if whole else torch.float32)
    return list(items)


__all__ = ["KINDS", "Cond", "CondKind", "CondOutput", "Conditioner", "LatentSpec", "collate_items"]
