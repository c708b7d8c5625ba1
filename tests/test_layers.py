"""Dependencies point one way: yoga_common <- yoga82 <- vit_yoga <- scripts; the files that ship with a checkpoint
import torch and transformers only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"yoga_common", "yoga82", "vit_yoga", "configuration_vit_yoga", "modeling_vit_yoga", "pipeline_vit_yoga",
        "train", "pretrain", "convert_vit_checkpoint", "app"}
# What each layer may import of ours (the package itself included).
ALLOWED = {
    "yoga_common": {"yoga_common"},
    "yoga82": {"yoga_common", "yoga82"},
    "vit_yoga": {"yoga_common", "yoga82", "vit_yoga", "configuration_vit_yoga", "modeling_vit_yoga",
                 "pipeline_vit_yoga"},
}
SHIPPED = ("configuration_vit_yoga.py", "modeling_vit_yoga.py", "pipeline_vit_yoga.py")


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, at any depth (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = (imported_modules(path) & OURS) - ALLOWED[package]
        if wrong:
            offenders[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not offenders, f"imports against the layering: {offenders}"


@pytest.mark.parametrize("name", SHIPPED)
def test_the_files_a_checkpoint_ships_import_torch_and_transformers_only(name):
    ours = imported_modules(ROOT / name) & OURS
    assert ours <= {Path(n).stem for n in SHIPPED}, ours


@pytest.mark.slow
def test_the_data_set_package_runs_without_the_training_library():
    code = ("import sys, yoga82, yoga82.download, yoga82.prepare, yoga82.export, yoga82.synthetic, yoga82.__main__\n"
            "assert 'vit_yoga' not in sys.modules, sorted(m for m in sys.modules if m.startswith('vit_yoga'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
