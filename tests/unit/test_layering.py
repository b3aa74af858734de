"""The import direction of /work/shared/DESIGN.md, checked by walking watcher/ with `ast`.

Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import watcher

PACKAGE = Path(watcher.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def parse(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), str(MODULES[name]))


def resolve(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> set[str]:
    """Every module of ours that `name` imports (`from watcher import x` counts as watcher.x)."""
    found: set[str] = set()
    for node in ast.walk(parse(name)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = resolve(name, node)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES)
    return {module for module in found if module == "watcher" or module.startswith("watcher.")} - {name}


def ours(name: str) -> set[str]:
    """Our imports, without the bare package (importing `watcher` itself only reads __version__)."""
    return imports_of(name) - {"watcher"}


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walker_sees_imports():
    assert "watcher.errors" in MODULES and "watcher.cli" in MODULES
    assert {"watcher.config", "watcher.errors"} <= ours("watcher.cli")
    assert "watcher.progress" in ours("watcher.cli")  # imported inside a function
    assert "watcher.backends.local" in ours("watcher.backends")  # imported lazily by the registry


def test_errors_imports_nothing_of_ours():
    assert ours("watcher.errors") == set()


def test_config_imports_only_errors():
    assert ours("watcher.config") <= {"watcher.errors"}


def test_logs_imports_nothing_of_ours_but_the_private_files():
    assert ours("watcher.logs") <= {"watcher.private"}


def test_private_files_import_nothing_of_ours():
    assert ours("watcher.private") == set()


BACKENDS = sorted(name for name in MODULES if under(name, "watcher.backends"))


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_never_import_upward(name):
    forbidden = ["watcher.repository", "watcher.actions", "watcher.cli", "watcher.daemon", "watcher.retry"]
    if name != "watcher.backends":  # the registry maps settings to a backend
        forbidden.append("watcher.config")
    bad = sorted(module for module in ours(name) if any(under(module, f) for f in forbidden))
    assert not bad, f"{name} imports {bad}"


ACTIONS = sorted(name for name in MODULES if under(name, "watcher.actions"))


@pytest.mark.parametrize("name", ACTIONS)
def test_actions_never_import_cli_or_daemon(name):
    bad = sorted(m for m in ours(name) if under(m, "watcher.cli") or under(m, "watcher.daemon"))
    assert not bad, f"{name} imports {bad}"


@pytest.mark.parametrize("name", ACTIONS)
def test_actions_never_read_the_environment_or_print(name):
    problems = []
    for node in ast.walk(parse(name)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "os" and node.attr in ("environ", "environb", "getenv", "putenv", "unsetenv"):
                problems.append(f"line {node.lineno}: os.{node.attr}")
            if node.value.id == "sys" and node.attr in ("stdout", "stderr", "exit"):
                problems.append(f"line {node.lineno}: sys.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("os", "sys"):
            for alias in node.names:
                if alias.name in ("environ", "environb", "getenv", "stdout", "stderr", "exit"):
                    problems.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "exit"):
            problems.append(f"line {node.lineno}: {node.func.id}()")
    assert not problems, f"{name}: {problems}"


def test_repository_never_imports_actions_or_cli():
    bad = sorted(m for m in ours("watcher.repository") if under(m, "watcher.actions") or under(m, "watcher.cli"))
    assert not bad


@pytest.mark.parametrize("name", ["watcher.snapshot", "watcher.crypto"])
def test_pure_codecs_import_only_errors_and_fields(name):
    # early_kdf: the start-up head start on scrypt that crypto takes its result from (standard library only)
    assert ours(name) <= {"watcher.errors", "watcher.fields", "watcher.early_kdf"}


def test_the_head_start_on_scrypt_imports_nothing_of_ours():
    assert ours("watcher.early_kdf") == set()
    assert ours("watcher.launch") == {"watcher.early_kdf", "watcher.cli"}  # the CLI only once it has begun


def test_packs_import_only_errors_fields_and_crypto():
    assert ours("watcher.pack") <= {"watcher.errors", "watcher.fields", "watcher.crypto"}


def test_fields_imports_nothing_of_ours():
    assert ours("watcher.fields") == set()


@pytest.mark.parametrize("name", sorted(name for name in MODULES
                                         if name not in ("watcher.cli", "watcher.__main__", "watcher.launch")))
def test_nothing_imports_cli_but_main(name):
    assert "watcher.cli" not in ours(name)
