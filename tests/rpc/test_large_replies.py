"""Handlers registered with ``large_reply``: the cyclic collector stays out of big replies."""

from __future__ import annotations

import gc
import threading

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.service import RpcService
from tests.support.waiting import wait_for


def test_the_collector_is_paused_only_while_a_large_reply_is_built_and_sent(broker: BrokerConfig):
    # Given a service with a listing registered as a large reply, and an ordinary op
    seen: dict[str, bool] = {}

    def listing() -> list[dict[str, int]]:
        seen["listing"] = gc.isenabled()
        return [{"n": i} for i in range(5000)]

    def ordinary() -> int:
        seen["ordinary"] = gc.isenabled()
        return 1

    service = RpcService(broker, "lister", workers=2)
    service.handle("listing", listing, large_reply=True)
    service.handle("ordinary", ordinary)
    service.start()
    try:
        with RpcClient(broker, "tester", timeout=10) as client:
            # When each is called
            assert client.call("lister", "listing") == [{"n": i} for i in range(5000)]
            # (the service resumes the collector once it has freed the reply it sent)
            assert wait_for(gc.isenabled)
            assert client.call("lister", "ordinary") == 1
    finally:
        service.stop()
    # Then only the listing ran with the collector paused, and it runs again afterwards
    assert seen == {"listing": False, "ordinary": True}


def test_overlapping_large_replies_resume_the_collector_once_all_are_done(broker: BrokerConfig):
    # Given a large-reply handler that two callers enter at once
    inside = threading.Barrier(2, timeout=10)
    states: list[bool] = []

    def listing() -> list[int]:
        inside.wait()
        states.append(gc.isenabled())
        inside.wait()  # both are inside: neither resumed the collector for the other
        states.append(gc.isenabled())
        return [1]

    service = RpcService(broker, "lister", workers=2)
    service.handle("listing", listing, large_reply=True)
    service.start()
    results: list[object] = []

    def call() -> None:
        with RpcClient(broker, "tester", timeout=10) as client:
            results.append(client.call("lister", "listing"))

    try:
        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        service.stop()
    # Then both ran paused, and the collector runs again once both are done
    assert results == [[1], [1]]
    assert states == [False] * 4
    assert wait_for(gc.isenabled)
