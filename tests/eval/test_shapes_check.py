"""The shapes checker agrees with the ground truth of builtin:shapes and rejects wrong captions."""

from __future__ import annotations

import pytest
import torch

from ldmctl.config import DataConfig
from ldmctl.data.shapes import ShapesDataset
from ldmctl.eval.shapes_check import check, parse_caption, score

SWAP = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}


def test_checker_matches_ground_truth_captions():
    ds = ShapesDataset(DataConfig(source="builtin:shapes", size=64), seed=3, length=200)
    items = [ds[i] for i in range(200)]
    result = score(torch.stack([it["image"] for it in items]), [it["caption"] for it in items])
    assert result["match"] >= 0.97, result
    assert result["n_two"] > 100


def test_checker_rejects_swapped_relations_and_wrong_colours():
    ds = ShapesDataset(DataConfig(source="builtin:shapes", size=64), seed=4, length=60)
    two = [ds[i] for i in range(60) if parse_caption(ds[i]["caption"])[1]]
    wrong_rel = wrong_col = 0
    for it in two:
        objs, rel = parse_caption(it["caption"])
        swapped = it["caption"].replace(rel, SWAP[rel])
        wrong_rel += check(it["image"], swapped)["match"]
        recoloured = it["caption"].replace(objs[0][0], "cyan" if objs[0][0] != "cyan" else "red", 1)
        wrong_col += check(it["image"], recoloured)["match"] and objs[1][0] != (
            "cyan" if objs[0][0] != "cyan" else "red"
        )
    assert wrong_rel <= 0.05 * len(two) and wrong_col <= 0.1 * len(two)


def test_parse_caption():
    assert parse_caption("a red circle") == ([("red", "circle")], None)
    assert parse_caption("a blue square above a green triangle") == (
        [("blue", "square"), ("green", "triangle")],
        "above",
    )
    with pytest.raises(ValueError):
        parse_caption("a pink hexagon")
