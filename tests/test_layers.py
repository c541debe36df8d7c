"""The package's layers import only downwards (README, "Layers").

Every `openmoe2_jax` import of every module (top level and inside functions) is checked against
LAYERS: a module may import its own unit and the units of lower layers, never a sibling unit of its
own layer or anything above. A command-line entry point is the top: the modules of the `entry`
unit, and, in a library module, imports inside a function named `main` or under
`if __name__ == "__main__":`.
"""
from __future__ import annotations

import ast
import os
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "openmoe2_jax"

# unit -> module-name prefixes (the longest matching prefix decides a module's unit)
UNITS = {
    "package": [],  # openmoe2_jax/__init__.py alone (see unit_of)
    "errors": ["openmoe2_jax.errors"],
    "progress": ["openmoe2_jax.progress"],
    "configs": ["openmoe2_jax.configs"],
    "kernels": ["openmoe2_jax.kernels"],
    "data": ["openmoe2_jax.data"],
    "models": ["openmoe2_jax.models"],
    "objectives": ["openmoe2_jax.objectives"],
    "validation": ["openmoe2_jax.validation"],
    "flops": ["openmoe2_jax.flops"],
    "ablations": ["openmoe2_jax.configs.ablations"],
    "parallel": ["openmoe2_jax.parallel"],
    "runtime": ["openmoe2_jax.runtime"],
    "export": ["openmoe2_jax.export"],
    "train": ["openmoe2_jax.train"],
    "eval": ["openmoe2_jax.eval"],
    "experiments": ["openmoe2_jax.experiments"],
    "plan": ["openmoe2_jax.plan"],
    "scaling": ["openmoe2_jax.scaling"],
    "cli": ["openmoe2_jax.cli"],
    "entry": ["openmoe2_jax.__main__", "openmoe2_jax.train.__main__", "openmoe2_jax.eval.__main__",
              "openmoe2_jax.export.__main__", "openmoe2_jax.scaling.__main__", "openmoe2_jax.data.prepare",
              "openmoe2_jax.experiments.reproduce", "openmoe2_jax.experiments.summary",
              "openmoe2_jax.kernels.bench_ec_topk", "openmoe2_jax.reproduce", "openmoe2_jax.sample",
              "openmoe2_jax.bench", "openmoe2_jax.launch"],
}

# Lowest first. Units of one layer are siblings: neither imports the other.
LAYERS = [
    ["package", "errors", "progress"],
    ["configs", "kernels", "data"],
    ["models"],
    ["objectives", "validation", "flops"],
    ["parallel", "ablations"],
    ["runtime"],
    ["export"],
    ["train", "eval"],
    ["experiments", "plan"],
    ["scaling"],
    ["cli"],
    ["entry"],
]


def unit_of(module: str) -> str:
    if module == "openmoe2_jax":
        return "package"
    best = max(((p, u) for u, ps in UNITS.items() for p in ps
                if module == p or module.startswith(p + ".")), key=lambda x: len(x[0]), default=None)
    assert best, f"{module} is in no unit of UNITS: add it"
    return best[1]


def layer_of(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def module_name(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Imports(ast.NodeVisitor):
    """(line, imported module) of every `openmoe2_jax` import outside the entry-point parts."""

    def __init__(self, module: str, is_package: bool, root: pathlib.Path):
        self.module, self.is_package, self.root, self.found = module, is_package, root, []

    def visit_FunctionDef(self, node):
        if node.name != "main":
            self.generic_visit(node)

    def visit_If(self, node):
        test = ast.unparse(node.test).replace("'", '"')
        if test != '__name__ == "__main__"':
            self.generic_visit(node)

    def visit_Import(self, node):
        self.found += [(node.lineno, a.name) for a in node.names if a.name.startswith("openmoe2_jax")]

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = self.module.split(".")
            package = package if self.is_package else package[:-1]
            base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
        if base.startswith("openmoe2_jax"):
            # `from openmoe2_jax.data import bpe` imports the module openmoe2_jax.data.bpe
            for a in node.names:
                sub = self.root / f"{base}.{a.name}".replace(".", "/")
                is_module = sub.with_suffix(".py").exists() or sub.is_dir()
                self.found.append((node.lineno, f"{base}.{a.name}" if is_module else base))


def python_files(package: pathlib.Path = PACKAGE) -> list[pathlib.Path]:
    """Every .py file of the package, through its links (configs/ and launch/ are linked from the
    repository's root into the package)."""
    return sorted(pathlib.Path(root) / f for root, _, files in os.walk(package, followlinks=True)
                  for f in files if f.endswith(".py"))


def upward_imports(package: pathlib.Path = PACKAGE) -> list[str]:
    bad = []
    for path in python_files(package):
        module = module_name(path, package)
        src_unit = unit_of(module)
        visitor = _Imports(module, path.name == "__init__.py", package.parent)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        for line, target in visitor.found:
            if target == "openmoe2_jax":
                continue
            dst_unit = unit_of(target)
            if dst_unit != src_unit and layer_of(dst_unit) >= layer_of(src_unit):
                bad.append(f"{path.relative_to(package.parent)}:{line}: {module} ({src_unit}, layer "
                           f"{layer_of(src_unit)}) imports {target} ({dst_unit}, layer {layer_of(dst_unit)})")
    return bad


def test_every_import_goes_down_the_layers():
    bad = upward_imports()
    assert not bad, "imports that do not go down the layers:\n" + "\n".join(bad)


def test_every_unit_has_one_layer_and_every_module_a_unit():
    placed = [u for units in LAYERS for u in units]
    assert sorted(placed) == sorted(UNITS) and len(set(placed)) == len(placed)
    files = python_files()
    assert {"openmoe2_jax.configs.base", "openmoe2_jax.launch.__main__"} <= {module_name(p) for p in files}
    for path in files:
        unit_of(module_name(path))


@pytest.mark.parametrize("source, target", [
    ("openmoe2_jax/train/loop.py", "openmoe2_jax.eval.generate"),          # sibling
    ("openmoe2_jax/data/pipeline.py", "openmoe2_jax.models.transformer"),  # upward
    ("openmoe2_jax/errors.py", "openmoe2_jax.data.sources"),               # the bottom imports nothing
])
def test_the_check_catches_an_upward_import(tmp_path, source, target):
    """The same check on a copy of the package with one bad import added finds exactly that import."""
    import shutil  # pylint: disable=import-outside-toplevel
    copy = tmp_path / "openmoe2_jax"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    victim = tmp_path / source
    victim.write_text(victim.read_text() + f"\nimport {target}  # added by the test\n")
    bad = upward_imports(copy)
    assert len(bad) == 1 and source in bad[0] and target in bad[0], bad
