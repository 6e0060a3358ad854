"""The label selector parser and the label rules (``dispatcher/selectors.py``): pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.selectors import (
    LabelRequirement,
    LabelSelector,
    check_labels,
    normalize_states,
    parse_selector,
)


def test_every_operator_parses_into_its_requirement() -> None:
    selector = parse_selector(
        "app=web, tier != db,env in (a, b),zone notin (x),example.com/owner,!legacy,k==v"
    )
    assert selector.requirements == (
        LabelRequirement("app", "=", ("web",)),
        LabelRequirement("tier", "!=", ("db",)),
        LabelRequirement("env", "in", ("a", "b")),
        LabelRequirement("zone", "notin", ("x",)),
        LabelRequirement("example.com/owner", "exists"),
        LabelRequirement("legacy", "!exists"),
        LabelRequirement("k", "=", ("v",)),
    )


@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_selector_selects_everything(text: str) -> None:
    assert parse_selector(text) == LabelSelector()
    assert parse_selector(text).matches(None) and parse_selector(text).matches({"a": "b"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app=web,", "bad label selector requirement ''"),
        ("app web", "bad label selector requirement 'app web'"),
        ("app=b=c", "bad label selector requirement"),
        ("!app=web", "bad label selector requirement"),
        ("app in (a", "unbalanced '\\('"),
        ("app in a)", "unbalanced '\\)'"),
        ("app in ()", "an empty set"),
        ("app in (a b)", "the value 'a b' must be"),
        ("-app", "label key '-app'"),
        ("UPPER.Case/app=x", "the prefix must be a DNS subdomain"),
        ("app=a b", "bad label selector requirement"),
        ("x" * 5000, "at most 4096 characters"),
    ],
)
def test_bad_selectors_raise_a_value_error_naming_the_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_selector(text)


def test_not_equal_and_notin_hold_when_the_label_is_missing() -> None:
    assert parse_selector("tier!=db").matches({})
    assert parse_selector("tier notin (db)").matches(None)
    assert not parse_selector("tier=db").matches({})
    assert not parse_selector("tier in (db)").matches({})


@pytest.mark.parametrize(
    "labels",
    [
        {"a" * 63: "v"},
        {"example.com/" + "a" * 63: ""},
        {"a.b_c-d": "A.b_c-9"},
        {"k8s.io/app": "web"},
    ],
)
def test_labels_at_the_limits_are_accepted(labels: dict[str, str]) -> None:
    assert check_labels(labels) == labels


def test_bare_state_names_become_full_names_without_repeats() -> None:
    assert normalize_states(["running", "500-RUNNING", "Terminated"]) == (
        "500-RUNNING",
        "700-TERMINATED",
    )


_NAMES = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
_REQUIREMENTS = st.one_of(
    st.builds(lambda k, v: LabelRequirement(k, "=", (v,)), _NAMES, _NAMES),
    st.builds(lambda k, v: LabelRequirement(k, "!=", (v,)), _NAMES, _NAMES),
    st.builds(
        lambda k, vs: LabelRequirement(k, "in", tuple(vs)), _NAMES, st.lists(_NAMES, min_size=1)
    ),
    st.builds(
        lambda k, vs: LabelRequirement(k, "notin", tuple(vs)),
        _NAMES,
        st.lists(_NAMES, min_size=1),
    ),
    st.builds(lambda k: LabelRequirement(k, "exists"), _NAMES),
    st.builds(lambda k: LabelRequirement(k, "!exists"), _NAMES),
)


@given(st.lists(_REQUIREMENTS, max_size=6))
def test_a_selector_written_out_parses_back_to_itself(requirements: list[LabelRequirement]) -> None:
    selector = LabelSelector(tuple(requirements))
    assert parse_selector(str(selector)) == selector
