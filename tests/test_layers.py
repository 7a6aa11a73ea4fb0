"""The house's layers: imports run one way, down.

    pipeline (data, no torch) < models < train < inference < tasks.py

Every module is parsed (ast) and EVERY import counts, the ones inside functions
too; an import of a higher layer, or of torch under pipeline/, fails.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["pipeline", "models", "train", "inference", "tasks"]       # low to high
NO_TORCH = {"pipeline"}


def _layer_of(module: str):
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def _modules():
    for layer in LAYERS:
        paths = [ROOT / "tasks.py"] if layer == "tasks" else sorted((ROOT / layer).rglob("*.py"))
        for path in paths:
            yield layer, path


def _imports(path: Path, package: str):
    """(line, absolute module name) of every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:                       # relative: inside its own package
                yield node.lineno, package + ("." + node.module if node.module else "")
            else:
                yield node.lineno, node.module


def upward_imports(root=ROOT):
    bad = []
    for layer, path in _modules():
        own = LAYERS.index(layer)
        for line, module in _imports(path, layer):
            other = _layer_of(module)
            if other is not None and other > own:
                bad.append(f"{path.relative_to(root)}:{line}: {layer} imports {module} (a higher layer)")
            if layer in NO_TORCH and module.split(".")[0] in ("torch", "torchvision"):
                bad.append(f"{path.relative_to(root)}:{line}: {layer} imports {module} (no torch here)")
    return bad


def test_imports_only_go_down():
    assert upward_imports() == []


def test_an_upward_import_inside_a_function_is_caught(tmp_path, monkeypatch):
    bad = ROOT / "pipeline" / "_layer_probe.py"
    bad.write_text("def f():\n    from train.fit import fit\n    import torch\n    return fit, torch\n")
    try:
        found = upward_imports()
    finally:
        bad.unlink()
    assert any("_layer_probe.py:2: pipeline imports train.fit" in b for b in found), found
    assert any("_layer_probe.py:3: pipeline imports torch" in b for b in found), found


@pytest.mark.parametrize("module", ["tasks", "inference.cli", "models.registry", "pipeline.preprocess"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
