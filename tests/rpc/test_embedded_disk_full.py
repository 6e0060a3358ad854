"""The embedded transport on a full disk: a typed error naming the folder, no leftovers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import DiskFullError, TransportError
from dashi.service import RpcService
from tests.support.tmpfs import fill, small_tmpfs, temporaries


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", 4) as mounted:
        yield mounted


def test_a_call_on_a_full_disk_fails_at_once_naming_it_and_leaves_no_temporary_file(
    disk: Path,
) -> None:
    broker = BrokerConfig(uri="embedded://", state_dir=disk / "state")
    service = RpcService(broker, "calc")
    service.handle("add", lambda a, b: a + b)
    service.start()
    try:
        with RpcClient(broker, "caller", timeout=10) as client:
            assert client.call("calc", "add", a=1, b=2) == 3
            # Given a disk with no space left
            fill(disk / "filler")
            # When a call is made
            with pytest.raises(DiskFullError) as failed:
                client.call("calc", "add", a=2, b=2)
            # Then it is a TransportError naming the full disk and the broker's folder
            assert isinstance(failed.value, TransportError)
            message = str(failed.value)
            assert message.startswith(f"No space left on device in {disk / 'state' / 'broker'}")
            # and the message it could not write left no file behind
            assert temporaries(disk / "state" / "broker") == []
            # When space is freed / Then calls work again
            (disk / "filler").unlink()
            assert client.call("calc", "add", a=2, b=3) == 5
    finally:
        service.stop()
