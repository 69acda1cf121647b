"""Imports run one way: every module of the package imports only from its own layer or the
layers below it, as docs/design.md lists them, and the training loop and the inference tools
never import each other."""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "jaxcifar"


def layers() -> list[tuple[int, str, list[str]]]:
    """(number, name, module patterns) of each layer in docs/design.md's `layers` block."""
    block = re.search(r"```layers\n(.*?)```", (REPO / "docs" / "design.md").read_text(), re.S).group(1)
    found = []
    for line in block.strip().splitlines():
        number, name, modules = re.fullmatch(r"(\d+) (\w+): (.*)", line.strip()).groups()
        found.append((int(number), name, [m.strip() for m in modules.split(",")]))
    return found


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_main_block(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":`, the stub that makes `python -m jaxcifar.train` call its
    command line: it runs only as a script, so it is the command's import, not the module's."""
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def is_type_checking_block(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:`: imports a type checker reads and Python never runs."""
    return isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")


def runtime_nodes(node: ast.AST):
    """`node` and every node under it that Python may run (not in a TYPE_CHECKING block)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not is_type_checking_block(child):
            yield from runtime_nodes(child)


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every jaxcifar module `path` imports when it runs, at its top or inside a function."""
    found = set()
    body = [node for node in ast.parse(path.read_text()).body
            if not is_main_block(node) and not is_type_checking_block(node)]
    for node in (inner for top in body for inner in runtime_nodes(top)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaxcifar":
            # `from jaxcifar import data` imports the module jaxcifar.data; `from jaxcifar.data
            # import Data` the module jaxcifar.data.
            found |= ({f"jaxcifar.{alias.name}" for alias in node.names} if node.module == "jaxcifar"
                      else {node.module})
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "jaxcifar"}
    return found - {module_name(path)}


def layer_of(module: str, table) -> tuple[int, str]:
    """The layer whose patterns name `module` (the longest pattern wins: `cli.*` over `cli`)."""
    short = module.removeprefix("jaxcifar.") if module != "jaxcifar" else "jaxcifar"
    best = None
    for number, name, patterns in table:
        for pattern in patterns:
            matches = (short.startswith(pattern[:-1]) and short != pattern[:-2]) if pattern.endswith("*") \
                else short == pattern
            if matches and (best is None or len(pattern) > best[0]):
                best = (len(pattern), (number, name))
    if best is None:
        raise AssertionError(f"{module} is in no layer of docs/design.md: add it to the one it belongs to.")
    return best[1]


def uphill_imports(modules: dict[str, set[str]], table) -> list[str]:
    wrong = []
    for module, imports in sorted(modules.items()):
        number, name = layer_of(module, table)
        for other in sorted(imports):
            other_number, other_name = layer_of(other, table)
            if other_number > number or (other_number == number and other_name != name):
                wrong.append(f"{module} ({name}) imports {other} ({other_name})")
    return wrong


def package_imports() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_imports_only_downhill():
    assert uphill_imports(package_imports(), layers()) == []


@pytest.mark.parametrize("module, imports, why", [
    ("jaxcifar.evaluate", {"jaxcifar.train"}, "an inference tool imports the loop"),
    ("jaxcifar.train", {"jaxcifar.runs"}, "the loop imports an inference tool"),
    ("jaxcifar.steps", {"jaxcifar.config"}, "core imports config"),
])
def test_an_uphill_or_sideways_import_is_caught(module, imports, why):
    assert uphill_imports({module: imports}, layers()), why


def test_a_module_in_no_layer_is_named():
    with pytest.raises(AssertionError, match="jaxcifar.newcomer is in no layer"):
        layer_of("jaxcifar.newcomer", layers())
