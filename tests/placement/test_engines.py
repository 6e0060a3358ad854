"""Engines: configuration errors, selection precedence, add_engine validation."""

from __future__ import annotations

import pytest

from dashi.errors import BadRequestError, WriteConflictError
from dispatcher.engines import EngineRegistry, engine_id_from_domain
from pdcommon.errors import ConfigError
from pdcommon.settings import EngineSettings

MAPPING = {
    "a.b.c.D": "engine1",
    "a.b.c": "engine2",
    "a": "engine3",
    "e.f": "engine3",
    "e.f.G": "engine1",
}


def registry(**kwargs) -> EngineRegistry:
    engines = {f"engine{i}": EngineSettings(slots=4) for i in range(1, 5)}
    return EngineRegistry(engines, **kwargs)


def test_a_default_engine_that_does_not_exist_is_a_configuration_error():
    with pytest.raises(ConfigError, match="default_engine 'nope'"):
        registry(default_engine="nope")


def test_a_mapping_to_an_unknown_engine_is_a_configuration_error():
    with pytest.raises(ConfigError, match="unknown engine 'ghost'"):
        registry(default_engine="engine1", process_engines={"a.b": "ghost"})


@pytest.mark.parametrize("mapping", [None, {}])
def test_no_mapping_gives_no_engine_for_a_module(mapping):
    assert registry(process_engines=mapping).engine_for_module("a.b.c", "D") is None


@pytest.mark.parametrize(
    ("module", "cls", "engine"),
    [
        ("a.b.c", "D", "engine1"),
        ("a.b.c", "E", "engine2"),
        ("a.b.x", "D", "engine3"),
        ("e", "B", None),
        ("e.f", "B", "engine3"),
        ("e.f", "G", "engine1"),
    ],
)
def test_the_longest_mapped_prefix_wins(module, cls, engine):
    assert registry(process_engines=MAPPING).engine_for_module(module, cls) == engine


def test_an_explicit_engine_constraint_beats_the_mapping_and_the_default():
    engines = {"engine1": EngineSettings(slots=1), "engine4": EngineSettings(slots=1)}
    reg = EngineRegistry(engines, "engine1", {"my": "engine4"})
    definition = {"executable": {"module": "my.test", "class": "MyClass"}}
    # Given an empty definition and no constraints / Then the default engine
    assert reg.engine_for_process({}, {"executable": {}}) == "engine1"
    # Given a mapped module / Then the mapped engine
    assert reg.engine_for_process(None, definition) == "engine4"
    # Given an explicit engine constraint / Then it wins, even if unknown
    assert (
        reg.engine_for_process({"engine": "mostimportantengine"}, definition)
        == "mostimportantengine"
    )


def test_effective_constraints_do_not_modify_the_stored_ones():
    reg = registry(default_engine="engine1")
    stored = {"hat_type": "fedora"}
    assert reg.effective_constraints(stored, {}) == {"hat_type": "fedora", "engine": "engine1"}
    assert stored == {"hat_type": "fedora"}


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ("engine", "must be a dict"),
        ({"slots": 1}, "must have an 'engine_id'"),
        ({"engine_id": "e"}, "must have 'slots'"),
        ({"engine_id": "e", "slots": 1, "colour": "red"}, "unknown key(s): colour"),
        ({"engine_id": "e", "slots": 0}, "invalid engine slots"),
        ({"engine_id": "e", "slots": 1, "replicas": "two"}, "invalid engine replicas"),
    ],
)
def test_a_bad_add_engine_definition_is_a_bad_request(definition, message):
    with pytest.raises(BadRequestError) as info:
        EngineRegistry.parse_definition(definition)
    assert message in info.value.value


def test_adding_an_existing_engine_is_a_conflict():
    reg = registry(default_engine="engine1")
    engine_id, engine = EngineRegistry.parse_definition({"engine_id": "engine9", "slots": 2})
    reg.add(engine_id, engine)
    assert reg.get("engine9").slots == 2
    with pytest.raises(WriteConflictError):
        reg.add(engine_id, engine)


@pytest.mark.parametrize(
    ("domain", "engine"),
    [("pd_domain_engine1", "engine1"), ("pd_domain_", None), ("other", None), (None, None)],
)
def test_engine_ids_come_from_domain_ids(domain, engine):
    assert engine_id_from_domain(domain) == engine
