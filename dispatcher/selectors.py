"""Process groups, labels and the filters of ``describe_processes``/``terminate_processes``.

A process may carry a ``group`` (an identifier, like a upid) and ``labels``
(string keys to string values). Keys and values follow Kubernetes' rules, so
selectors written for it read the same here:

* a key is ``[prefix/]name``; ``name`` is 1 to 63 characters of ASCII letters,
  digits and ``-_.``, beginning and ending with a letter or digit; the optional
  ``prefix`` is a DNS subdomain (at most 253 characters of lower-case letters,
  digits, ``-`` and ``.``, each dot-separated part beginning and ending with a
  letter or digit);
* a value is empty or like ``name`` (at most 63 characters);
* a process has at most :data:`MAX_LABELS` labels.

A label selector is a comma-separated list of requirements, all of which must hold:
``key=value`` (or ``key==value``), ``key!=value`` (true too when the label is
missing), ``key in (a,b)``, ``key notin (a,b)`` (true when missing), ``key``
(the label exists) and ``!key`` (it does not). :func:`parse_selector` parses the
text once into a :class:`LabelSelector`; bad syntax raises ``ValueError`` with a
message naming the offending part (the request models turn it into a
``BadRequestError``).

A :class:`ProcessFilter` holds the whole filter of a listing: states, engine,
group, name and upid prefixes (narrowed by the store's query) and the label
selector (checked on the narrowed records by :meth:`ProcessFilter.matches_labels`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pdcommon.states import ProcessState

__all__ = [
    "MAX_LABELS",
    "MAX_SELECTOR_LENGTH",
    "LabelRequirement",
    "LabelSelector",
    "ProcessFilter",
    "check_group",
    "check_labels",
    "normalize_states",
    "parse_selector",
]

#: Most labels one process may carry.
MAX_LABELS: Final = 64
#: Longest label selector text accepted.
MAX_SELECTOR_LENGTH: Final = 4096
#: Longest group name.
MAX_GROUP_LENGTH: Final = 128

_NAME: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_GROUP: Final = re.compile(r"[A-Za-z0-9._-]+")

Operator = Literal["=", "!=", "in", "notin", "exists", "!exists"]


def _is_dns_subdomain(text: str) -> bool:
    return 0 < len(text) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in text.split("."))


def check_label_key(key: object) -> str:
    """Return ``key`` if it is a valid label key, else raise ``ValueError``."""
    if not isinstance(key, str):
        raise ValueError(f"label key {key!r} is not a string")
    prefix, slash, name = key.rpartition("/")
    if slash and not _is_dns_subdomain(prefix):
        raise ValueError(
            f"label key {key!r}: the prefix must be a DNS subdomain "
            "(lower-case letters, digits, '-' and '.'; at most 253 characters)"
        )
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"label key {key!r}: the name must be 1 to 63 characters of letters, digits "
            "and '-_.', beginning and ending with a letter or digit"
        )
    return key


def check_label_value(key: str, value: object) -> str:
    """Return ``value`` if it is a valid value of label ``key``, else raise ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"label {key!r}: the value {value!r} is not a string")
    if value and not _NAME.fullmatch(value):
        raise ValueError(
            f"label {key!r}: the value {value!r} must be empty or 1 to 63 characters of "
            "letters, digits and '-_.', beginning and ending with a letter or digit"
        )
    return value


def check_labels(labels: object) -> dict[str, str] | None:
    """Validate a ``labels`` argument: an object of string keys to string values.

    Returns:
        A fresh dict, or ``None`` for ``None`` or an empty object (no labels).

    Raises:
        ValueError: the message names the offending key or value.
    """
    if labels is None:
        return None
    if not isinstance(labels, dict):
        raise ValueError("must be an object of label keys to string values")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels; at most {MAX_LABELS} are allowed")
    checked = {check_label_key(key): check_label_value(key, value) for key, value in labels.items()}
    return checked or None


def check_group(group: object) -> str | None:
    """Validate a ``group`` argument: ``None`` or 1 to 128 of ASCII letters, digits, ``.-_``.

    Raises:
        ValueError: it is not.
    """
    if group is None:
        return None
    if not isinstance(group, str):
        raise ValueError("must be a string")
    if len(group) > MAX_GROUP_LENGTH or not _GROUP.fullmatch(group):
        raise ValueError(
            f"{group!r} is not a group name (1 to {MAX_GROUP_LENGTH} ASCII letters, "
            "digits and '.-_')"
        )
    return group


_STATE_NAMES: Final = {state.split("-", 1)[1]: state for state in ProcessState.ALL}


def normalize_states(states: object) -> tuple[str, ...] | None:
    """Validate a ``states`` argument: a list of states, full (``500-RUNNING``) or bare
    (``RUNNING``, any case).

    Returns:
        The full state names, in the order given, without repeats; ``None`` for ``None``.

    Raises:
        ValueError: a state is unknown (the message lists the known ones).
    """
    if states is None:
        return None
    if isinstance(states, str) or not isinstance(states, list | tuple):
        raise ValueError("must be a list of process states")
    result: list[str] = []
    for state in states:
        if not isinstance(state, str):
            raise ValueError(f"{state!r} is not a process state")
        full = state if state in ProcessState.ALL else _STATE_NAMES.get(state.upper())
        if full is None:
            raise ValueError(
                f"unknown process state {state!r}; known: " + ", ".join(ProcessState.ALL)
            )
        if full not in result:
            result.append(full)
    return tuple(result)


@dataclass(frozen=True)
class LabelRequirement:
    """One requirement of a selector: ``key``, an operator and its values."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a process with ``labels`` meets this requirement."""
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # "!=", "notin"

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!exists":
            return "!" + self.key
        if self.operator in ("=", "!="):
            return f"{self.key}{self.operator}{self.values[0]}"
        return f"{self.key} {self.operator} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """A parsed label selector: every requirement must hold (empty: matches all)."""

    requirements: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether a process with ``labels`` (``None``: none) is selected."""
        present = labels or {}
        return all(requirement.matches(present) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


# key (with an optional prefix), then an operator; the key ends at an operator,
# a space, a comma or the end.
_TOKEN: Final = re.compile(
    r"""\s*(?:
        (?P<not>!)\s*(?P<nkey>[^\s,!=()]+)               # !key
      | (?P<key>[^\s,!=()]+)\s*
        (?:
            (?P<op>==|=|!=)\s*(?P<value>[^\s,!=()]*)      # key=value, key!=value
          | (?P<set>in|notin)\s*\(\s*(?P<values>[^()]*)\)  # key in (a,b)
        )?
    )\s*""",
    re.VERBOSE,
)


def parse_selector(text: object) -> LabelSelector:
    """Parse a Kubernetes-style label selector (see the module docstring).

    Raises:
        ValueError: the text is not a selector; the message shows where.
    """
    if not isinstance(text, str):
        raise ValueError("a label selector must be a string")
    if len(text) > MAX_SELECTOR_LENGTH:
        raise ValueError(f"a label selector is at most {MAX_SELECTOR_LENGTH} characters")
    if not text.strip():
        return LabelSelector()
    requirements: list[LabelRequirement] = []
    for part in _split_top_level(text):
        match = _TOKEN.fullmatch(part)
        if match is None or not part.strip():
            raise ValueError(f"bad label selector requirement {part.strip()!r} in {text!r}")
        requirements.append(_requirement(match, part.strip()))
    return LabelSelector(tuple(requirements))


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in label selector {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '(' in label selector {text!r}")
    parts.append(text[start:])
    return parts


def _requirement(match: re.Match[str], part: str) -> LabelRequirement:
    if match.group("not"):
        return LabelRequirement(check_label_key(match.group("nkey")), "!exists")
    key = check_label_key(match.group("key"))
    op = match.group("op")
    if op is not None:
        value = check_label_value(key, match.group("value"))
        return LabelRequirement(key, "!=" if op == "!=" else "=", (value,))
    set_op = match.group("set")
    if set_op is not None:
        values = tuple(v.strip() for v in match.group("values").split(","))
        if values == ("",):
            raise ValueError(f"bad label selector requirement {part!r}: an empty set")
        for value in values:
            check_label_value(key, value)
        return LabelRequirement(key, "in" if set_op == "in" else "notin", values)
    return LabelRequirement(key, "exists")


@dataclass(frozen=True)
class ProcessFilter:
    """What a process listing selects; ``None`` fields select everything.

    The store narrows its query with ``states``, ``engine``, ``group`` and the
    prefixes; the label selector is checked on what the query returns
    (:meth:`matches_labels`).
    """

    #: Full state names (``500-RUNNING``).
    states: tuple[str, ...] | None = None
    #: The engine the process asked for (its ``constraints["engine"]``: the id, or
    #: one of a one-of list).
    engine: str | None = None
    group: str | None = None
    name_prefix: str | None = None
    upid_prefix: str | None = None
    labels: LabelSelector = field(default_factory=LabelSelector)

    @property
    def empty(self) -> bool:
        """True when it selects every process."""
        return (
            self.states is None
            and self.engine is None
            and self.group is None
            and self.name_prefix is None
            and self.upid_prefix is None
            and not self.labels.requirements
        )

    def matches_engine(self, constraints: Any) -> bool:
        """Whether a process with ``constraints`` asked for :attr:`engine`."""
        if self.engine is None:
            return True
        wanted = constraints.get("engine") if isinstance(constraints, dict) else None
        if isinstance(wanted, list):
            return self.engine in wanted
        return wanted == self.engine

    def matches_labels(self, labels: Mapping[str, str] | None) -> bool:
        return self.labels.matches(labels)

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether a process (its wire dict, or its fields as a mapping) is selected."""
        if self.states is not None and record.get("state") not in self.states:
            return False
        if self.group is not None and record.get("group") != self.group:
            return False
        name = record.get("name")
        if self.name_prefix is not None and not (
            isinstance(name, str) and name.startswith(self.name_prefix)
        ):
            return False
        if self.upid_prefix is not None and not str(record.get("upid")).startswith(
            self.upid_prefix
        ):
            return False
        return self.matches_engine(record.get("constraints")) and self.matches_labels(
            record.get("labels")
        )
