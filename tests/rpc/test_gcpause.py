"""collector_paused(): one reference-counted, thread-safe pause of the garbage collector."""

from __future__ import annotations

import ast
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from dashi import gcpause
from dashi.gcpause import collector_paused
from dispatcher.store._codec import gc_paused


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.enable()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def overlap(first: Callable[[], AbstractContextManager[None]]) -> list[tuple[str, bool]]:
    """A enters, B enters, A leaves, B leaves, each in its own thread.

    Returns what each thread saw (``gc.isenabled()``) at each step, in order.
    """
    seen: list[tuple[str, bool]] = []
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a() -> None:
        with first():
            seen.append(("a inside", gc.isenabled()))
            a_in.set()
            assert b_in.wait(10)
        seen.append(("a left", gc.isenabled()))
        a_out.set()

    def b() -> None:
        assert a_in.wait(10)
        with first():
            seen.append(("b inside", gc.isenabled()))
            b_in.set()
            assert a_out.wait(10)
            seen.append(("b inside after a left", gc.isenabled()))
        seen.append(("b left", gc.isenabled()))

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    return seen


def test_overlapping_users_resume_the_collector_only_when_the_last_leaves() -> None:
    # Given an enabled collector, When two threads' pauses overlap
    seen = overlap(collector_paused)
    # Then it stays paused until the second has left too
    assert seen == [
        ("a inside", False),
        ("b inside", False),
        ("a left", False),
        ("b inside after a left", False),
        ("b left", True),
    ]


def test_overlapping_large_listings_of_the_store_share_the_pause() -> None:
    # Given two store listings of 1000+ rows built at once (the store's own pause)
    seen = overlap(lambda: gc_paused(5000))
    # Then the first to finish does not resume the collector under the second
    assert ("b inside after a left", False) in seen
    assert seen[-1] == ("b left", True)


def test_a_pause_nested_in_the_same_thread_keeps_the_outer_one() -> None:
    # Given a pause, When another is entered and left inside it, Then still paused
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_an_exception_inside_resumes_the_collector_and_propagates() -> None:
    # When the block raises, Then the error reaches the caller and the collector runs
    with pytest.raises(KeyError), collector_paused():
        assert not gc.isenabled()
        raise KeyError("boom")
    assert gc.isenabled()
    # And the count is back to zero: the next pause resumes it as well
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_disabled_beforehand_stays_disabled() -> None:
    # Given a collector the program disabled itself
    gc.disable()
    # When pauses come and go, overlapping or not (and one raising)
    seen = overlap(collector_paused)
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("boom")
    # Then it is never enabled
    assert [enabled for _, enabled in seen] == [False] * 5
    assert not gc.isenabled()


def test_the_module_imports_nothing_of_the_project() -> None:
    # The wire code (moving to its own package) imports it: only the standard library
    tree = ast.parse(Path(gcpause.__file__).read_text())
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
        )
    }
    assert imported == {"__future__", "contextlib", "gc", "threading", "collections"}
