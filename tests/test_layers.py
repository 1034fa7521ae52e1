"""The package's layers, as the README's "How the code is organised" lists them: a module imports only from
its own layer or the ones below it (commands -> folder run / training / metrics / bench -> pipeline ->
models -> core)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ccsr"
TOP = ("ccsr.cli", "ccsr.__main__", "ccsr.commands", "ccsr.app")
FEATURES = ("ccsr.upscale", "ccsr.training", "ccsr.metrics", "ccsr.bench", "ccsr.data", "ccsr.consistency")


def layer(module: str) -> int:
    """4 commands and the app, 3 features, 2 the pipeline, 1 models, 0 the pure core (and ``ccsr`` itself,
    which holds only the version and lazy names)."""
    if module.startswith(TOP):
        return 4
    if module.startswith(FEATURES):
        return 3
    if module == "ccsr.pipeline":
        return 2
    if module.startswith("ccsr.models"):
        return 1
    return 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ccsr"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("ccsr"))
    return out - {"ccsr"}


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for other in imported(ast.parse(path.read_text(encoding="utf-8"))):
            if layer(other) > layer(me) and me != "ccsr":
                upward.append(f"{me} (layer {layer(me)}) imports {other} (layer {layer(other)})")
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    tree = ast.parse("from ccsr.pipeline import CCSRPipeline\nimport ccsr.upscale.run\n")
    assert imported(tree) == {"ccsr.pipeline", "ccsr.upscale.run"}
    assert (
        layer("ccsr.models.loading") < layer("ccsr.pipeline") < layer("ccsr.upscale.run") < layer("ccsr.cli")
    )
