"""Contract checks every conditioner must pass, built-in or third-party: import them in your tests.

    from ldmctl.testing import check_conditioner
    def test_my_conditioner():
        check_conditioner(MyConditioner, MyConditioner.Config(), make_batch)

``make_batch(batch_size, seed)`` returns a batch dict with the conditioner's ``input_key``
(different seeds giving different conditions). The checks: the class is well-formed and
registrable, ``out_dim`` is a positive int, ``forward`` and ``null`` give the shapes its ``kind``
promises, outputs follow the batch size, different conditions give different outputs, eval-mode
outputs are deterministic, and a state-dict round trip reproduces them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ldmctl.conditioning.base import CondOutput, Conditioner, LatentSpec
from ldmctl.conditioning.registry import check_conditioner_class

DEFAULT_LATENT = LatentSpec(channels=4, size=8, factor=4)


def _check_shape(c: Conditioner, out: CondOutput, batch_size: int, what: str) -> None:
    v = out.value
    assert isinstance(out, CondOutput), f"{c.name}.{what} must return a CondOutput, got {type(out).__name__}"
    assert v.shape[0] == batch_size, f"{c.name}.{what}: batch size {v.shape[0]}, expected {batch_size}"
    if c.kind == "concat":
        assert v.ndim == 4 and v.shape[1] == c.out_dim, f"{c.name}.{what}: expected (B, {c.out_dim}, h, w), got {tuple(v.shape)}"
    elif c.kind == "add":
        assert v.shape == (batch_size, c.out_dim), f"{c.name}.{what}: expected (B, {c.out_dim}), got {tuple(v.shape)}"
    else:
        assert v.ndim == 3 and v.shape[2] == c.out_dim, f"{c.name}.{what}: expected (B, L, {c.out_dim}), got {tuple(v.shape)}"
        if out.mask is not None:
            assert out.mask.shape == v.shape[:2] and out.mask.dtype == torch.bool, f"{c.name}.{what}: bad mask"
    assert torch.isfinite(v).all(), f"{c.name}.{what} has non-finite values"


def check_conditioner(cls: type, config: Any, make_batch: Callable[[int, int], Mapping[str, Any]],
                      latent: LatentSpec = DEFAULT_LATENT) -> Conditioner:
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
    return c


__all__ = ["DEFAULT_LATENT", "check_conditioner"]
