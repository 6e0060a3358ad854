"""JSON-shaped trees handled without recursion: depth, copy, encode and decode.

Stored values (a process's ``configuration``, a definition's ``executable``...)
are trees of dicts, lists and scalars whose depth the dispatcher does not choose:
a database written by an older version may hold a value nested hundreds of
levels deep. Python's recursive helpers (``copy.deepcopy``, the ``json`` module's
C encoder and decoder) count one interpreter frame or more per level and raise
``RecursionError`` near the interpreter's limit (1000 frames, fewer on a thread
whose stack is already deep), so one such value made every operation touching
its record fail.

The functions here take the fast recursive path of the standard library (or
orjson) first and fall back to an explicit stack when that path runs out of
recursion, so any depth works at a cost paid only by the deep values:

* :func:`depth` - how many container levels a value nests, and :func:`deeper_than`;
* :func:`tree_copy` - a deep copy of a JSON-like tree (containers keep their type);
* :func:`dumps` - compact JSON text, exactly as ``json.JSONEncoder(separators=(",", ":"))``;
* :func:`loads` - :func:`dashi.fastjson.loads`, and for texts nested too deep
  for it a parser with the standard library's results.

Of the project, this module imports only :mod:`dashi.fastjson`.
"""

from __future__ import annotations

import copy
import json
import math
import re
from json.decoder import scanstring  # type: ignore[attr-defined]
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from dashi import fastjson

__all__ = ["MAX_DEPTH", "deeper_than", "depth", "dumps", "loads", "tree_copy"]

#: Deepest tree the fallbacks handle (a guard against circular structures built in
#: memory: a JSON text this deep is 200 KB of brackets and decodes fine).
MAX_DEPTH: Final = 100_000

_COMPACT: Final = json.JSONEncoder(separators=(",", ":"))
_CONTAINERS: Final = (dict, list, tuple)
#: Limits up to which :func:`deeper_than` recurses (at most this many frames: a
#: value cannot take it further, whatever its depth).
_RECURSION_BUDGET: Final = 200


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """The nesting depth of ``value``: 0 for a scalar, 1 for ``[]``, 2 for ``[[]]``...

    Dicts, lists and tuples count as containers; anything else is a leaf.

    Args:
        value: the tree.
        limit: stop walking once this depth is exceeded (then ``limit + 1`` is
            returned): a circular structure ends too.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children: Any
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if level > deepest:
            deepest = level
            if deepest > limit:
                return limit + 1
        stack.extend((child, level + 1) for child in children if isinstance(child, _CONTAINERS))
    return deepest


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` container levels.

    Several times faster than :func:`depth` on the shallow values records hold: up
    to a limit of 200 it recurses, at most ``limit + 1`` frames deep (the walk stops
    there, whatever the value's depth); beyond, it walks with :func:`depth`.
    """
    if limit > _RECURSION_BUDGET:
        return depth(value, limit) > limit
    return _deeper(value, limit)


def _deeper(value: Any, budget: int) -> bool:
    kind = type(value)
    if kind is dict:
        children: Any = value.values()
    elif kind is list or kind is tuple:
        children = value
    else:
        return False
    if budget <= 0:
        return True
    for child in children:
        kind = type(child)
        if (kind is dict or kind is list or kind is tuple) and _deeper(child, budget - 1):
            return True
    return False


# -- copy ------------------------------------------------------------------------------


def tree_copy(value: Any) -> Any:
    """A deep copy of a JSON-like tree (dicts, lists, tuples, scalars), at any depth.

    Containers keep their type, as with :func:`copy.deepcopy`; any other mutable
    value is copied with :func:`copy.deepcopy`.

    Raises:
        ValueError: the tree nests deeper than :data:`MAX_DEPTH` (it is circular).
    """
    try:
        return _copy_recursive(value)
    except RecursionError:
        return _copy_iterative(value)


def _copy_recursive(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {key: _copy_recursive(item) for key, item in value.items()}
    if kind is list:
        return [_copy_recursive(item) for item in value]
    if kind is tuple:
        return tuple(_copy_recursive(item) for item in value)
    return copy.deepcopy(value)


def _copy_iterative(value: Any) -> Any:
    holder: list[Any] = [None]
    # (source, the container the copy goes into, its slot there, depth)
    stack: list[tuple[Any, Any, Any, int]] = [(value, holder, 0, 1)]
    tuples: list[tuple[list[Any], Any, Any]] = []  # rebuilt children first, at the end
    while stack:
        source, parent, slot, level = stack.pop()
        kind = type(source)
        if kind is dict:
            if level > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels (circular?)")
            mapping: dict[Any, Any] = dict.fromkeys(source)
            parent[slot] = mapping
            stack.extend((item, mapping, key, level + 1) for key, item in source.items())
        elif kind is list or kind is tuple:
            if level > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels (circular?)")
            items: list[Any] = [None] * len(source)
            parent[slot] = items
            if kind is tuple:
                tuples.append((items, parent, slot))
            stack.extend((item, items, index, level + 1) for index, item in enumerate(source))
        elif kind is str or kind is int or kind is float or kind is bool or source is None:
            parent[slot] = source
        else:
            parent[slot] = copy.deepcopy(source)
    for items, parent, slot in reversed(tuples):
        parent[slot] = tuple(items)
    return holder[0]


# -- encode ----------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``, as ``json.JSONEncoder(separators=(",", ":"))``.

    Raises:
        TypeError: ``value`` holds something that is not JSON-serializable.
        ValueError: ``value`` is circular, or holds an integer too long to convert.
    """
    try:
        return _COMPACT.encode(value)
    except RecursionError:
        return _dumps_iterative(value)


class _Raw:
    """Text to emit as is (and the container to leave when emitted)."""

    __slots__ = ("leave", "text")

    def __init__(self, text: str, leave: int | None = None) -> None:
        self.text = text
        self.leave = leave


def _dumps_iterative(value: Any) -> str:
    parts: list[str] = []
    path: set[int] = set()  # the containers being emitted (circularity check)
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Raw:
            parts.append(item.text)
            if item.leave is not None:
                path.discard(item.leave)
        elif isinstance(item, dict):
            _enter(item, path)
            parts.append("{")
            stack.append(_Raw("}", id(item)))
            entries = list(item.items())
            for index in range(len(entries) - 1, -1, -1):
                key, child = entries[index]
                stack.append(child)
                stack.append(_Raw(("," if index else "") + _key_text(key) + ":"))
        elif isinstance(item, list | tuple):
            _enter(item, path)
            parts.append("[")
            stack.append(_Raw("]", id(item)))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_Raw(","))
        else:
            parts.append(_scalar_text(item))
    return "".join(parts)


def _enter(container: Any, path: set[int]) -> None:
    marker = id(container)
    if marker in path:
        raise ValueError("Circular reference detected")
    if len(path) >= MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    path.add(marker)


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _float_text(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return encode_basestring_ascii(key)
    if isinstance(key, float):
        return encode_basestring_ascii(_float_text(key))
    if key is True or key is False or key is None:
        return encode_basestring_ascii(_scalar_text(key))
    if isinstance(key, int):
        return encode_basestring_ascii(int.__repr__(key))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


# -- decode ----------------------------------------------------------------------------


def loads(text: str | bytes) -> Any:
    """Parse ``text`` exactly as ``json.loads`` does, at any nesting depth.

    Raises:
        json.JSONDecodeError: ``text`` is not JSON.
    """
    try:
        return fastjson.loads(text)
    except RecursionError:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogatepass")
        return _loads_iterative(text)


_WS: Final = re.compile(r"[ \t\n\r]*")
_NUMBER: Final = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_CONSTANTS: Final = {
    "null": None,
    "true": True,
    "false": False,
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}


def _loads_iterative(text: str) -> Any:
    """The standard library's parse of ``text`` (NaN and Infinity literals, last
    duplicate key wins), with an explicit stack of the open containers."""
    ws = _skip
    # Each open container: [container, key awaiting its value (objects)].
    stack: list[list[Any]] = []
    pos = ws(text, 0)
    result: Any = None
    done = False
    while True:
        # -- a value starts at pos
        if pos >= len(text):
            raise json.JSONDecodeError("Expecting value", text, pos)
        char = text[pos]
        value: Any
        if char == "{":
            pos = ws(text, pos + 1)
            if text.startswith("}", pos):
                value, pos = {}, pos + 1
            else:
                key, pos = _object_key(text, pos)
                stack.append([{}, key])
                pos = ws(text, pos)
                continue
        elif char == "[":
            pos = ws(text, pos + 1)
            if text.startswith("]", pos):
                value, pos = [], pos + 1
            else:
                stack.append([[], None])
                continue
        elif char == '"':
            value, pos = scanstring(text, pos + 1, True)
        else:
            value, pos = _scalar(text, pos)
        # -- a value is complete: attach it, then close containers or move on
        while True:
            if not stack:
                result, done = value, True
                break
            top = stack[-1]
            container = top[0]
            if isinstance(container, dict):
                container[top[1]] = value
            else:
                container.append(value)
            pos = ws(text, pos)
            closer = "}" if isinstance(container, dict) else "]"
            if text.startswith(",", pos):
                pos = ws(text, pos + 1)
                if isinstance(container, dict):
                    top[1], pos = _object_key(text, pos)
                    pos = ws(text, pos)
                break
            if text.startswith(closer, pos):
                pos += 1
                value = stack.pop()[0]
                continue
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        if done:
            break
    end = ws(text, pos)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return result


def _skip(text: str, pos: int) -> int:
    """The position after the whitespace at ``pos``."""
    match = _WS.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _object_key(text: str, pos: int) -> tuple[str, int]:
    """A key and its colon at ``pos``; returns the key and the position of its value."""
    if not text.startswith('"', pos):
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
    key, pos = scanstring(text, pos + 1, True)
    pos = _skip(text, pos)
    if not text.startswith(":", pos):
        raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
    return key, _skip(text, pos + 1)


def _scalar(text: str, pos: int) -> tuple[Any, int]:
    for literal in ("null", "true", "false", "NaN", "Infinity", "-Infinity"):
        if text.startswith(literal, pos):
            return _CONSTANTS[literal], pos + len(literal)
    match = _NUMBER.match(text, pos)
    if match is None:
        raise json.JSONDecodeError("Expecting value", text, pos)
    integer, fraction, exponent = match.groups()
    if fraction or exponent:
        return float(integer + (fraction or "") + (exponent or "")), match.end()
    return int(integer), match.end()
