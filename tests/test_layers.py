"""The house rules of docs/concepts.md ("Layers: who may import whom"), checked on the code itself:
every import of ldmctl/ and plugins/ points to its own room or a lower layer, there is no import
cycle between modules, no module is over 400 lines and no function over 50."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room -> layer; a room is a top-level module or package of ldmctl (or the built-in plugins)
LAYERS = {
    "errors": 1, "layers": 1,
    "config": 2, "text": 2, "tiling": 2, "files": 2, "device": 2, "models": 2,
    "data": 3, "conditioning": 3,
    "autoencoder": 4, "unet": 4, "schedule": 4, "ldmctl_conditioners": 4, "testing": 4,
    "checkpoint": 5, "samplers": 5,
    "superres": 6, "inpaint": 6,
    "diffusion": 7,
    "sampling": 8, "editing": 8, "export": 8, "convert": 8,
    "eval": 9, "lora": 9,
    "train": 10,
    "compare": 11,
    "cli": 12, "__main__": 13,
}  # fmt: skip


def _sources() -> list[Path]:
    found = sorted((ROOT / "ldmctl").rglob("*.py")) + sorted((ROOT / "plugins").rglob("*.py"))
    return [p for p in found if "build" not in p.relative_to(ROOT).parts]  # pip's build/ copies


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "plugins":
        parts = parts[1:] if parts[1] == "ldmctl_conditioners" else ["ldmctl_cond_example", *parts[2:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "ldmctl":  # ldmctl itself, or a name of its face (hookimpl, __version__): no room
        return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None
    return parts[0] if parts[0] in LAYERS else None


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return found


def _module_names() -> set[str]:
    return {_module(p) for p in _sources()}


def test_every_room_has_a_layer():
    rooms = set()
    for path in _sources():
        parts = _module(path).split(".")
        if parts[0] == "ldmctl" and len(parts) > 1:
            rooms.add(parts[1])
    assert rooms <= set(LAYERS), f"rooms without a layer in docs/concepts.md: {sorted(rooms - set(LAYERS))}"


def test_imports_point_down_the_layers():
    wrong = []
    for path in _sources():
        here = _room(_module(path))
        if here is None or here == "ldmctl_cond_example":
            continue
        for target in _imports(path):
            there = _room(target)
            if there is not None and there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(
                    f"{path.relative_to(ROOT)} ({here}, layer {LAYERS[here]}) imports {target} "
                    f"({there}, layer {LAYERS[there]})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    names = _module_names()
    graph = {}
    for path in _sources():
        deps = set()
        for target in _imports(path):
            while target and target not in names:
                target = target.rpartition(".")[0]
            if target and target != _module(path):
                deps.add(target)
        graph[_module(path)] = deps
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_modules_and_functions_stay_small():
    big = []
    for path in _sources():
        text = path.read_text()
        if text.count("\n") > 400:
            big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                big.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                )
    assert not big, "\n".join(big)
