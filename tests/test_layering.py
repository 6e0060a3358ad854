"""The layering of the packages: ``dashi`` and ``pdcommon`` stand alone, ``eeagent`` stays light.

Each check imports in a fresh interpreter (the test session has everything loaded
already) and lists the project modules that came with the import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LIST_MODULES = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after_importing(*names: str, walk: bool = False) -> set[str]:
    """The module names loaded by a fresh interpreter that imports ``names``
    (with ``walk``, every module of those packages too)."""
    code = (
        _LIST_MODULES
        if walk
        else "import importlib, json, sys\n"
        + (
            "for name in sys.argv[1:]: importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))\n"
        )
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout))


def top_level(modules: set[str], *packages: str) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in packages)


def test_importing_dashi_loads_nothing_of_the_rest_of_the_project() -> None:
    assert (
        top_level(loaded_after_importing("dashi"), "dispatcher", "eeagent", "cli", "pdcommon") == []
    )


def test_every_dashi_module_imports_nothing_of_the_rest_of_the_project() -> None:
    loaded = loaded_after_importing("dashi", walk=True)
    assert {"dashi.client", "dashi.service", "dashi.transport.embedded"} <= loaded
    assert top_level(loaded, "dispatcher", "eeagent", "cli", "pdcommon") == []


def test_the_shared_base_imports_only_dashi() -> None:
    loaded = loaded_after_importing("pdcommon", walk=True)
    assert {"pdcommon.settings", "pdcommon.procfs", "pdcommon.heartbeat_messages"} <= loaded
    assert top_level(loaded, "dispatcher", "eeagent", "cli") == []


@pytest.mark.parametrize(
    "module", ["eeagent", "eeagent.records", "eeagent.table", "eeagent.transitions"]
)
def test_importing_an_eeagent_record_module_loads_neither_kombu_nor_the_service(
    module: str,
) -> None:
    loaded = loaded_after_importing(module)
    assert module in loaded
    assert top_level(loaded, "kombu", "amqp", "supervisor", "dispatcher", "cli") == []
    assert "eeagent.service" not in loaded
    assert "eeagent.supervisor" not in loaded


@pytest.mark.parametrize(
    "module", ["pdcommon.settings", "pdcommon.states", "pdcommon.heartbeat_messages"]
)
def test_the_shared_models_load_no_broker_library(module: str) -> None:
    # The health and placement modules read settings and states without kombu.
    loaded = loaded_after_importing(module)
    assert top_level(loaded, "kombu", "amqp", "sqlalchemy") == []
