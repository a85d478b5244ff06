from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ldmctl.checkpoint import load_train_state, read_checkpoint, save_checkpoint, save_train_state
from ldmctl.errors import CheckpointError
from ldmctl.files import atomic_write


def _tensors():
    return {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(3)}


def test_round_trip_keeps_config_and_tensors(tmp_path):
    path = save_checkpoint(
        tmp_path / "m.safetensors", _tensors(), kind="autoencoder", config={"z_channels": 4}, extra={"step": 3}
    )
    ck = read_checkpoint(path, expect_kind="autoencoder")
    assert ck.config == {"z_channels": 4} and ck.extra == {"step": 3} and ck.kind == "autoencoder"
    assert torch.equal(ck.tensors["w"], _tensors()["w"])
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_wrong_kind_missing_truncated_foreign(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _tensors(), kind="ldm", config={})
    with pytest.raises(CheckpointError, match="is a ldm checkpoint"):
        read_checkpoint(path, expect_kind="autoencoder")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "junk.safetensors")
    save_file(_tensors(), str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not written by ldmctl"):
        read_checkpoint(tmp_path / "plain.safetensors")


def test_tampered_metadata(tmp_path):
    save_file(
        _tensors(),
        str(tmp_path / "t.safetensors"),
        metadata={"ldmctl.kind": "autoencoder", "ldmctl.schema": "1", "ldmctl.config": "{oops"},
    )
    with pytest.raises(CheckpointError, match="corrupt metadata"):
        read_checkpoint(tmp_path / "t.safetensors")


def test_train_state_is_weights_only(tmp_path):
    path = save_train_state(tmp_path / "s.pt", {"step": 5, "opt": {"lr": 0.1, "t": torch.ones(2)}})
    assert load_train_state(path)["step"] == 5

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_train_state(tmp_path / "evil.pt")


def test_atomic_write_into_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.json", lambda tmp: tmp.write_text(json.dumps({})))


def test_autoencoder_file_alone_rebuilds_an_identical_model(tmp_path):
    from ldmctl.autoencoder import build_autoencoder
    from ldmctl.checkpoint import load_autoencoder as load_model
    from ldmctl.checkpoint import save_autoencoder
    from ldmctl.config import preset

    for kind in ("kl", "vq"):
        cfg = preset("tiny").model.__class__(**{**preset("tiny").model.__dict__, "kind": kind})
        torch.manual_seed(0)
        ae = build_autoencoder(cfg).eval()
        ae.scale_factor.fill_(0.37)
        path = save_autoencoder(ae, tmp_path / f"{kind}.safetensors")
        again = load_model(path)
        assert again.config == cfg and float(again.scale_factor) == pytest.approx(0.37)
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        with torch.no_grad():
            assert torch.equal(ae.decode(ae.encode(x)), again.decode(again.encode(x)))


def test_tampered_weights_are_a_checkpoint_error(tmp_path):
    from ldmctl.checkpoint import load_autoencoder, save_checkpoint
    from ldmctl.config import preset, to_dict

    path = save_checkpoint(
        tmp_path / "bad.safetensors", {"w": torch.ones(1)}, kind="autoencoder", config=to_dict(preset("tiny").model)
    )
    with pytest.raises(CheckpointError, match="do not match"):
        load_autoencoder(path)


def test_written_files_get_the_usual_permissions(tmp_path):
    """mkstemp and safetensors create 0600 files; checkpoints and images must follow the umask."""
    import os

    import torch

    from ldmctl.checkpoint import save_checkpoint
    from ldmctl.files import atomic_write

    umask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "a.safetensors", {"w": torch.zeros(2)}, kind="x", config={})
        atomic_write(tmp_path / "b.txt", lambda p: p.write_text("hi"))
    finally:
        os.umask(umask)
    for name in ("a.safetensors", "b.txt"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == "0o644", name
