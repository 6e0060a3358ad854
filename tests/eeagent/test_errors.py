"""Errors: the package's hierarchy, and the supervisord adapter's translation of
every XML-RPC and socket failure into it."""

from __future__ import annotations

import http.server
import socketserver
import threading
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

import eeagent.errors
from eeagent.errors import (
    BackendFaultError,
    BackendStartError,
    BackendUnavailableError,
    EEAgentError,
)
from eeagent.supervisor import SupervisorControl
from pdcommon.errors import DispatcherError


def test_every_error_of_the_package_derives_from_one_base() -> None:
    classes = [
        getattr(eeagent.errors, name)
        for name in eeagent.errors.__all__
        if isinstance(getattr(eeagent.errors, name), type)
    ]
    assert len(classes) == 9
    assert all(issubclass(cls, EEAgentError) for cls in classes)
    assert issubclass(EEAgentError, DispatcherError)


class _Handler(http.server.BaseHTTPRequestHandler):
    reply: tuple[int, bytes] = (200, b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = self.reply
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake_supervisord(tmp_path: Path) -> Iterator[tuple[SupervisorControl, type[_Handler]]]:
    """An adapter whose socket is served by a scripted HTTP server."""
    control = SupervisorControl(tmp_path / "agent1", rpc_timeout=2.0)
    handler = type("Handler", (_Handler,), {})
    Path(control.files.socket).parent.mkdir(parents=True, exist_ok=True)
    server = _Server(control.files.socket, handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield control, handler
    server.shutdown()
    server.server_close()


def test_an_xmlrpc_fault_becomes_a_backend_fault_with_its_code(
    fake_supervisord: tuple[SupervisorControl, type[_Handler]],
) -> None:
    control, handler = fake_supervisord
    fault = xmlrpc.client.Fault(91, "STILL_RUNNING: x")
    handler.reply = (200, xmlrpc.client.dumps(fault, methodresponse=True).encode())
    with pytest.raises(BackendFaultError) as caught:
        control.remove("x")
    assert caught.value.code == 91
    assert caught.value.fault == "STILL_RUNNING: x"
    assert isinstance(caught.value.__cause__, xmlrpc.client.Fault)


def test_an_http_error_status_means_the_backend_is_unavailable(
    fake_supervisord: tuple[SupervisorControl, type[_Handler]],
) -> None:
    control, handler = fake_supervisord
    handler.reply = (500, b"oops")
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        control.poll()


def test_an_unreadable_reply_means_the_backend_is_unavailable(
    fake_supervisord: tuple[SupervisorControl, type[_Handler]],
) -> None:
    control, handler = fake_supervisord
    handler.reply = (200, b"<not xml")
    with pytest.raises(BackendUnavailableError):
        control.poll()


def test_a_missing_socket_means_the_backend_is_unavailable(tmp_path: Path) -> None:
    control = SupervisorControl(tmp_path / "agent1")
    with pytest.raises(BackendUnavailableError, match="unreachable") as caught:
        control.poll()
    assert isinstance(caught.value.__cause__, OSError)


def test_a_supervisord_that_hangs_times_out_as_unavailable(tmp_path: Path) -> None:
    control = SupervisorControl(tmp_path / "agent1", rpc_timeout=0.3)
    Path(control.files.socket).parent.mkdir(parents=True, exist_ok=True)
    # the server accepts the connection (backlog) but never answers
    with (
        socketserver.UnixStreamServer(control.files.socket, socketserver.BaseRequestHandler),
        pytest.raises(BackendUnavailableError, match="timed out"),
    ):
        control.poll()


def test_another_supervisord_on_the_socket_is_refused(
    fake_supervisord: tuple[SupervisorControl, type[_Handler]],
) -> None:
    control, handler = fake_supervisord
    handler.reply = (200, xmlrpc.client.dumps(("someone-else",), methodresponse=True).encode())
    with pytest.raises(BackendStartError, match="served by another supervisord"):
        control.open()


def test_a_supervisord_that_cannot_start_says_why(tmp_path: Path) -> None:
    control = SupervisorControl(tmp_path / "agent1", supdexe=tmp_path / "no-supervisord")
    with pytest.raises(BackendStartError, match="cannot run"):
        control.open()


def test_a_supervisord_that_exits_at_once_reports_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "fake-supervisord"
    fake.write_text("#!/bin/sh\necho 'Error: bad configuration' >&2\nexit 2\n")
    fake.chmod(0o755)
    control = SupervisorControl(tmp_path / "agent1", supdexe=fake)
    with pytest.raises(BackendStartError, match="exited with status 2: Error: bad configuration"):
        control.open()
