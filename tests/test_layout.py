"""The package's layout: docs/architecture.md's tree is the package's, folders rank as the
architecture says (no import runs back up), no module-level import cycle, and `evaluation`
is a NumPy leaf."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "psta_jax"

# Lower ranks never import higher ones (function-level imports included).
RANKS = {
    "runtime": 0,
    "evaluation": 0,
    "models": 1,
    "datasets": 1,
    "input": 2,
    "config_base": 3,
    "interop": 3,
    "training": 4,
    "inspection": 5,
    "serving": 6,
}
COMMANDS = ("main", "embed", "search", "export", "launch")
COMMAND_MODULES = ("inspection.__main__", "interop.convert")  # commands inside a folder
COMMAND_RANK = 7


def _modules() -> dict[str, pathlib.Path]:
    return {
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
        if "dummy_data" not in path.parts
    }


def _rank(module: str) -> int:
    relative = module.removeprefix("psta_jax").lstrip(".")
    if relative in COMMANDS or relative in COMMAND_MODULES:
        return COMMAND_RANK
    return RANKS.get(relative.split(".")[0], COMMAND_RANK) if relative else COMMAND_RANK


def _imports(path: pathlib.Path, modules: set[str], *, top_level_only: bool) -> set[str]:
    """The psta_jax modules `path` imports (a `from package import name` counts the
    submodule `package.name` when there is one)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules and name != "psta_jax"}


def test_architecture_md_shows_the_package_tree():
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```text\n(psta_jax/\n.*?)```", text, re.S)
    assert block, "docs/architecture.md needs the package tree in a ```text block"
    documented, stack = set(), []
    for line in block.group(1).splitlines()[1:]:  # "  name   what it is", two spaces a level
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        stack[depth - 1 :] = [line.split()[0].rstrip("/")]
        documented.add("/".join(stack))
    actual = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*")
        if "__pycache__" not in path.parts
        and (path.is_dir() or path.suffix == ".py")
        and "dummy_data" not in path.parts[:-1]
    }
    assert documented == actual, (
        f"in the package, not in docs/architecture.md: {sorted(actual - documented)}; "
        f"documented, not in the package: {sorted(documented - actual)}"
    )


def test_no_import_runs_back_up_the_layers():
    modules = _modules()
    upward = [
        f"{module} (rank {_rank(module)}) imports {imported} (rank {_rank(imported)})"
        for module, path in modules.items()
        for imported in _imports(path, set(modules), top_level_only=False)
        if _rank(imported) > _rank(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_module_level_import_cycle():
    modules = _modules()
    graph = {m: _imports(p, set(modules), top_level_only=True) - {m} for m, p in modules.items()}
    visiting, done, cycles = set(), set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(path[path.index(module) :] + [module])
            return
        visiting.add(module)
        for imported in sorted(graph[module]):
            if not imported.startswith(module + "."):  # a package's own submodules
                visit(imported, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles, cycles


def test_evaluation_is_a_numpy_leaf():
    probe = (
        "import sys, psta_jax.evaluation\n"
        "print(sorted({'jax', 'tensorflow', 'flax', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
    modules = _modules()
    for module, path in modules.items():
        if _rank(module) == RANKS["evaluation"] and module.startswith("psta_jax.evaluation"):
            imported = _imports(path, set(modules), top_level_only=False)
            assert all(m.startswith("psta_jax.evaluation") for m in imported), (module, imported)


# Where a run's ConfigDict may be read: the commands, the config base, the loop and evaluate
# mode (training), and the one reader and writer of config.json.
CONFIG_READERS = {
    "psta_jax.config_base",
    "psta_jax.main",
    "psta_jax.interop.convert",
    "psta_jax.runtime.workdir",
    "psta_jax.training.loop",
    "psta_jax.training.evaluator",
}


def test_no_config_dict_below_the_loop():
    """Every other module takes typed settings (config_base.train_input, ...), not a config."""
    readers = set()
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "ml_collections" for name in names):
                readers.add(module)
    assert readers <= CONFIG_READERS, sorted(readers - CONFIG_READERS)
