"""The layers of docs/ARCHITECTURE.md hold: no module imports one of a higher layer, lazily or not.

Every ``import``/``from ... import`` in ``src/ddetr`` (function-level ones included: a lazy import is still a
dependency) is read with ``ast`` and the importing module's layer is compared with the imported one's.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ddetr"

# lowest first; modules of one layer may import each other
LAYERS: list[tuple[str, ...]] = [
    ("_version", "errors", "fileio", "crypto", "status", "spec", "eval"),
    ("artefacts",),
    ("model",),
    ("data", "viz"),
    ("runtime",),
    ("engine", "deploy", "automl", "jobs"),
    ("tasks",),
    ("api",),
    ("cli",),
    ("demo", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """``ddetr.model.detector`` -> ``model``; the package root ``ddetr`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    module = "ddetr." + ".".join(path.relative_to(root).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ddetr"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.split(".")[0] != "ddetr":
                continue
            if name == "ddetr":  # `from ddetr import x`: x may be a subpackage
                found += [(node.lineno, f"ddetr.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, name))
    return found


def upward_imports(root: Path = SRC) -> list[str]:
    """``file:line imports X (layer a -> b)`` for every import of a higher layer."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        if path.parent == root and path.name == "__init__.py":
            continue  # the package's face hands the public API on, lazily
        unit = _unit("ddetr." + ".".join(path.relative_to(root).with_suffix("").parts))
        if unit not in RANK:
            problems.append(f"{path.relative_to(root)}: module of no layer; add it to LAYERS")
            continue
        for line, name in _imports(path, root):
            target = _unit(name)
            if target == "" and RANK[unit] > RANK["api"]:
                continue  # above the API, the package's public face may be used
            if target == "":
                problems.append(
                    f"{path.relative_to(root)}:{line} imports the package root ddetr (import ddetr._version)"
                )
            elif target == "__version__":
                problems.append(
                    f"{path.relative_to(root)}:{line} imports ddetr.__version__ (import ddetr._version)"
                )
            elif target not in RANK:
                problems.append(f"{path.relative_to(root)}:{line} imports {name}, which is in no layer")
            elif RANK[target] > RANK[unit]:
                problems.append(
                    f"{path.relative_to(root)}:{line} imports {name} ({unit} -> {target}, upward)"
                )
    return problems


def test_no_upward_import() -> None:
    problems = upward_imports()
    assert not problems, "\n".join(problems)


def test_the_check_finds_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.py").write_text("def f():\n    from ddetr.tasks import train\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "fine.py").write_text("from ddetr.model import bad\nfrom ..model import bad as b\n")
    assert upward_imports(tmp_path) == ["model/bad.py:2 imports ddetr.tasks (model -> tasks, upward)"]


def test_lower_layers_import_without_the_higher_ones() -> None:
    """Importing the low layers loads nothing of the layers above them (no hidden import at module level)."""
    import subprocess
    import sys

    code = (
        "import sys, ddetr.spec.sections, ddetr.artefacts.card, ddetr.artefacts.checkpoint, ddetr.model.detector\n"
        "high = ('ddetr.runtime', 'ddetr.tasks', 'ddetr.engine', 'ddetr.deploy', 'ddetr.automl', 'ddetr.cli')\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith(high))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
