"""No import cycles inside ``tether.controller`` (issue 12), checked on every ``make test``
as well as by ``make lint``'s import-linter contracts. Imports under ``TYPE_CHECKING`` count:
a cycle that only the type checker follows still ties the modules together."""

from __future__ import annotations

import graphlib

import grimp


def controller_imports() -> dict[str, set[str]]:
    """Each module of tether.controller -> the modules of tether.controller it imports."""
    graph = grimp.build_graph("tether.controller", include_external_packages=False)
    return {module: set(graph.find_modules_directly_imported_by(module))
            for module in graph.modules}


def test_the_graph_is_read_from_the_controller_package() -> None:
    imports = controller_imports()
    assert "tether.controller.gateway" in imports["tether.controller.app"]
    assert "tether.controller.services.router" in imports


def test_no_module_of_the_controller_imports_itself_back_through_others() -> None:
    try:
        order = list(graphlib.TopologicalSorter(controller_imports()).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert order


def test_a_cycle_would_be_reported_with_its_modules() -> None:
    """The check above can fail: the same sorter on a graph with a cycle names it."""
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    try:
        list(graphlib.TopologicalSorter(imports).static_order())
    except graphlib.CycleError as exc:
        assert set(exc.args[1]) == {"a", "b", "c"}
    else:
        raise AssertionError("no cycle reported")
