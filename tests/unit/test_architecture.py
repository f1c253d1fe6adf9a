"""The layering rules of the house, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from flows.config import parse_site
from flows.registry import BUILTINS, components, load_components

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wire", "operators", "connectors", "simulators", "flows", "models", "reports")


def _imports(package: str) -> dict[str, set[str]]:
    """Module path -> the project packages it imports (static imports, at any depth)."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = {n for n in names if n in PACKAGES} - {package}
    return out


def test_wire_is_the_lowest_layer():
    for module, deps in _imports("wire").items():
        assert not deps, f"{module} imports {deps}"


def test_flows_imports_no_component():
    for module, deps in _imports("flows").items():
        assert deps <= {"wire"}, f"{module} imports {deps}"


def test_simulators_never_import_connectors():
    for module, deps in _imports("simulators").items():
        assert "connectors" not in deps, f"{module} imports connectors"


def test_no_two_packages_import_each_other():
    graph = {p: set().union(*_imports(p).values()) for p in PACKAGES}
    for a, deps in graph.items():
        for b in deps:
            assert a not in graph[b], f"{a} and {b} import each other"


def test_sinks_take_record_types_from_wire_not_from_operators():
    for module, deps in _imports("connectors").items():
        assert "operators" not in deps, f"{module} imports operators"


def test_every_builtin_is_loaded_and_every_component_has_a_valid_sample():
    load_components()
    modules = {c.module for c in components()}
    assert modules <= set(BUILTINS) | {m for m in modules if not m.startswith(PACKAGES)}
    checked = 0
    for comp in components():
        if not comp.module.startswith(PACKAGES):
            continue  # third-party components are the tests' own fixtures
        assert comp.sample is not None and comp.sample.is_file(), f"{comp.type} has no sample"
        entry = yaml.safe_load(comp.sample.read_text())
        assert entry["type"] == comp.type
        model = comp.config.model_validate(entry, context={"base_dir": comp.sample.parent})
        assert model.type == comp.type
        checked += 1
    assert checked == len([c for c in components() if c.module.startswith(PACKAGES)]) >= 17


@pytest.mark.parametrize("site_file", sorted((ROOT / "flows" / "sites").glob("*.yaml")))
def test_every_shipped_site_loads(site_file):
    from flows.config import load_site

    assert load_site(site_file).name


def test_the_site_schema_follows_the_registry():
    data = {
        "name": "s",
        "site": {"enterprise": "e", "site": "s"},
        "inputs": [{"type": "simulator"}],
        "sinks": [{"type": "console"}],
    }
    site = parse_site(data)
    assert type(site.inputs[0]).__module__ == "simulators.config"
