"""Contract checks every conditioner must pass, built-in or third-party: import them in your tests.

    from ldmctl.testing import check_conditioner
    def test_my_conditioner():
        check_conditioner(MyConditioner, MyConditioner.Config(), make_batch,
                          inputs=["0.2", "0.9"], bad_input="bright")

``make_batch(batch_size, seed)`` returns a batch dict with the conditioner's ``input_key``
(different seeds giving different conditions). The checks: the class is well-formed and
registrable, ``out_dim`` is a positive int, ``forward`` and ``null`` give the shapes its ``kind``
promises, outputs follow the batch size, different conditions give different outputs, eval-mode
outputs are deterministic, and a state-dict round trip reproduces them.

The sample-time contract (``ldmctl sample --input KEY=VALUE``, see docs/plugins.md) is checked
with ``inputs``, example command-line values: each is read by ``parse_input``, the items are
joined by ``collate_inputs`` and the result is a batch ``forward`` accepts, with one row per value
and different rows for different values. ``default_inputs`` must give None or items that work the
same way, ``describe_input`` a non-empty string, and ``bad_input`` (a value the conditioner cannot
read) an error: an InputError (any LdmctlError, e.g. DataError for a missing file) or ValueError.
Without ``inputs``, the default inputs (if any) are checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ldmctl.conditioning.base import Conditioner, CondOutput, LatentSpec
from ldmctl.conditioning.registry import check_conditioner_class
from ldmctl.errors import LdmctlError

DEFAULT_LATENT = LatentSpec(channels=4, size=8, factor=4)


def _check_shape(c: Conditioner, out: CondOutput, batch_size: int, what: str) -> None:
    v = out.value
    assert isinstance(out, CondOutput), f"{c.name}.{what} must return a CondOutput, got {type(out).__name__}"
    assert v.shape[0] == batch_size, f"{c.name}.{what}: batch size {v.shape[0]}, expected {batch_size}"
    if c.kind == "concat":
        assert v.ndim == 4 and v.shape[1] == c.out_dim, (
            f"{c.name}.{what}: expected (B, {c.out_dim}, h, w), got {tuple(v.shape)}"
        )
    elif c.kind == "add":
        assert v.shape == (batch_size, c.out_dim), f"{c.name}.{what}: expected (B, {c.out_dim}), got {tuple(v.shape)}"
    else:
        assert v.ndim == 3 and v.shape[2] == c.out_dim, (
            f"{c.name}.{what}: expected (B, L, {c.out_dim}), got {tuple(v.shape)}"
        )
        if out.mask is not None:
            assert out.mask.shape == v.shape[:2] and out.mask.dtype == torch.bool, f"{c.name}.{what}: bad mask"
    assert torch.isfinite(v).all(), f"{c.name}.{what} has non-finite values"


def check_conditioner(
    cls: type,
    config: Any,
    make_batch: Callable[[int, int], Mapping[str, Any]],
    latent: LatentSpec = DEFAULT_LATENT,
    *,
    inputs: Sequence[str] | None = None,
    bad_input: str | None = None,
) -> Conditioner:
    """Run every contract check on ``cls(config, latent)``; return the instance. AssertionError on failure."""
    check_conditioner_class(cls)
    c = cls(config, latent).eval()
    assert isinstance(c.out_dim, int) and c.out_dim > 0, f"{cls.name}.out_dim must be a positive int"
    for b in (1, 3):
        batch = make_batch(b, 0)
        assert cls.input_key in batch, f"make_batch must provide {cls.input_key!r}"
        with torch.no_grad():
            out, again = c(batch), c(batch)
            _check_shape(c, out, b, "forward")
            torch.testing.assert_close(out.value, again.value, msg=f"{cls.name}: eval outputs are not deterministic")
            _check_shape(c, c.null(b), b, "null")
    with torch.no_grad():
        a, b2 = c(make_batch(3, 0)).value, c(make_batch(3, 1)).value
    assert not torch.equal(a, b2), f"{cls.name}: different conditions gave the same output"
    clone = cls(config, latent).eval()
    clone.load_state_dict(c.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone(make_batch(3, 0)).value, a, msg=f"{cls.name}: state-dict round trip differs")
    check_sample_inputs(c, inputs, bad_input)
    return c


def check_sample_inputs(c: Conditioner, inputs: Sequence[str] | None = None, bad_input: str | None = None) -> None:
    """The sample-time contract of an instance (see the module docstring); AssertionError on failure."""
    about = c.describe_input()
    assert isinstance(about, str) and about, f"{c.name}.describe_input() must return a non-empty string"
    defaults = c.default_inputs(4)
    assert defaults is None or (isinstance(defaults, list) and defaults), (
        f"{c.name}.default_inputs(n) must return None or a non-empty list, got {defaults!r}"
    )
    if defaults is not None:
        _check_items(c, [defaults[i % len(defaults)] for i in range(4)], "default_inputs")
    if inputs:
        _check_items(c, [c.parse_input(text) for text in inputs], f"parse_input({list(inputs)!r})")
        if len(set(inputs)) > 1:
            with torch.no_grad():
                v = c({c.input_key: c.collate_inputs([c.parse_input(text) for text in inputs])}).value
            assert any(not torch.equal(v[0], v[i]) for i in range(1, len(inputs)) if inputs[i] != inputs[0]), (
                f"{c.name}: different --input values gave the same output"
            )
    if bad_input is not None:
        try:
            c.parse_input(bad_input)
        except (LdmctlError, ValueError):
            pass
        else:
            raise AssertionError(f"{c.name}.parse_input({bad_input!r}) must raise an InputError (or ValueError)")


def _check_items(c: Conditioner, items: list[Any], what: str) -> None:
    value = c.collate_inputs(items)
    assert len(value) == len(items), f"{c.name}.collate_inputs of {what}: {len(value)} rows for {len(items)} items"
    assert len(value[0:1]) == 1, f"{c.name}.collate_inputs must return something sliceable along the batch"
    with torch.no_grad():
        _check_shape(c, c({c.input_key: value}), len(items), f"forward of {what}")


__all__ = ["DEFAULT_LATENT", "check_conditioner", "check_sample_inputs"]
