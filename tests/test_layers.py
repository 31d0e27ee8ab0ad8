"""The folders are the architecture: each layer imports only downward, no module imports itself
back through others, and Paramiko is imported only under bacpac/transport/ssh/.

The import graph is read from the source (ast), so a lazy import inside a function counts as
much as one at the top; an import under `if TYPE_CHECKING:` is for type comments only and
does not.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bacpac", "remote_helper")

# The layer of a module is its first folder below the package (a module directly in the package
# is named here); each layer lists the layers it may import, itself included.
LAYER_OF_TOP_MODULE = {
    "bacpac.__init__": "base", "bacpac.errors": "base", "bacpac.spec": "base",
    "bacpac.lazy": "base", "bacpac.threads": "base",
    "bacpac.cli": "cli", "bacpac.__main__": "cli",
    "remote_helper.__init__": "errors", "remote_helper.errors": "errors",
}
MAY_IMPORT = {
    "bacpac": {
        "base": {"base"},
        "ui": {"ui", "base"},
        "engine": {"engine", "base"},
        "transport": {"transport", "base"},
        "inventory": {"inventory", "base"},
        "commands": {"commands", "engine", "transport", "ui", "inventory", "base"},
        "cli": {"cli", "commands", "engine", "transport", "ui", "inventory", "base"},
    },
    "remote_helper": {
        "errors": {"errors"},
        "wire": {"wire", "errors"},
        "target": {"target", "wire", "errors"},
        "tree": {"tree", "target", "wire", "errors"},
        "saveset": {"saveset", "tree", "target", "wire", "errors"},
        "jobs": {"jobs", "saveset", "tree", "target", "wire", "errors"},
    },
}
# What the client may use of the helper's code: the codec and the target's facts, not its jobs.
CLIENT_MAY_IMPORT = {"errors", "wire", "target", "tree", "saveset"}


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = file.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts)] = file
    return found


MODULES = module_files()


def layer(module: str) -> str:
    if module in LAYER_OF_TOP_MODULE:
        return LAYER_OF_TOP_MODULE[module]
    parts = module.split(".")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return parts[1]


def _known(name: str) -> str:
    """The module `name` stands for: a module file, or a package's __init__."""
    return name if name in MODULES else name + ".__init__"


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST):
    """Every import statement, except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = node.body if isinstance(node, ast.If) and _is_type_checking(node) else None
        stack.extend(c for c in ast.iter_child_nodes(node)
                     if children is None or c not in children)


def imports_of(module: str) -> set[str]:
    """The modules (of ours) and the external top-level names that `module` imports."""
    package = module.split(".")[:-1]  # a module's package; an __init__'s is its own
    found = set()
    for node in _import_nodes(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(_known(a.name) if a.name.split(".")[0] in PACKAGES else a.name
                         for a in node.names)
            continue
        base = package[:len(package) - node.level + 1] if node.level else []
        source = ".".join(base + ([node.module] if node.module else []))
        if source.split(".")[0] not in PACKAGES:
            found.add(source)
            continue
        for alias in node.names:
            child = f"{source}.{alias.name}"  # `from package import module`, or a name
            is_module = child in MODULES or child + ".__init__" in MODULES
            found.add(_known(child if is_module else source))
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_its_own_layer_and_those_below(module: str) -> None:
    package = module.split(".")[0]
    allowed = MAY_IMPORT[package][layer(module)]
    for imported in sorted(GRAPH[module]):
        if imported not in MODULES:
            continue
        if imported.split(".")[0] != package:
            assert layer(imported) in CLIENT_MAY_IMPORT, f"{module} imports {imported}"
        else:
            assert layer(imported) in allowed, f"{module} ({layer(module)}) imports {imported}"


def test_the_helper_imports_nothing_of_the_client() -> None:
    for module, imported in GRAPH.items():
        if module.startswith("remote_helper"):
            assert not any(name.startswith("bacpac") for name in imported), module


def test_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for imported in sorted(GRAPH[module]):
            if imported in MODULES:
                visit(imported, path + [module])
        done.add(module)

    for module in sorted(MODULES):
        visit(module, [])


def test_paramiko_is_imported_only_by_the_ssh_package() -> None:
    importers = sorted(m for m, imported in GRAPH.items()
                       if any(name.split(".")[0] == "paramiko" for name in imported))
    assert importers and all(m.startswith("bacpac.transport.ssh.") for m in importers), importers


def _command(module: str) -> str:
    """The command a module of bacpac.commands belongs to: a module, or a package (run/)."""
    return module.split(".")[2]


def test_a_command_imports_no_other_command_only_what_they_share() -> None:
    shared = {"bacpac.commands.jobs", "bacpac.commands.__init__"}
    for module, imported in GRAPH.items():
        if module.startswith("bacpac.commands."):
            others = {m for m in imported if m.startswith("bacpac.commands.")
                      and _command(m) != _command(module)} - shared
            assert not others, f"{module} imports {sorted(others)}"
