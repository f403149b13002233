"""`serve --workers`' process management: sockets bound before the fork, exit codes and errors of workers."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import typer

from anger_stream.serve.audiosocket_connection import AudioSocketConnection
from anger_stream.serve.mediastream_connection import MediaStreamConnection
from anger_stream.serve.server import Listen, ListenError
from anger_stream.serve.workers import bind, run


def test_every_worker_gets_its_own_socket_on_one_port() -> None:
    per_worker = bind([Listen(AudioSocketConnection, "127.0.0.1", 0), Listen(MediaStreamConnection, "127.0.0.1", 0)], 3)
    try:
        assert len(per_worker) == 3 and all(len(copies) == 2 for copies in per_worker)
        for k in range(2):
            ports = {copies[k].port for copies in per_worker}
            assert len(ports) == 1 and ports == {copies[k].sock.getsockname()[1] for copies in per_worker}
        with pytest.raises(ListenError, match="cannot listen"):  # the port is taken, SO_REUSEPORT or not
            bind([Listen(AudioSocketConnection, "127.0.0.1", per_worker[0][0].port)], 2)
    finally:
        for copies in per_worker:
            for spec in copies:
                spec.sock.close()


def _work(index: int, listen: list[Listen], failure: BaseException) -> None:
    """Worker 0 serves nothing and ends well; worker 1 fails as the CLI does, or with a bug."""
    assert isinstance(listen[0].sock, socket.socket) and listen[0].sock.fileno() >= 0
    if index == 1:
        raise failure


@pytest.mark.parametrize(
    ("failure", "code", "message"),
    [
        (typer.Exit(3), 3, "worker 1 exited with code 3; stopping"),  # after `fail()` printed its line
        (RuntimeError("boom"), 1, "worker 1: internal error: RuntimeError: boom"),
        (SystemExit(5), 5, "worker 1 exited with code 5"),
    ],
)
def test_a_failing_worker_gives_its_exit_code_and_one_line(
    failure: BaseException, code: int, message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    work = partial(_work, failure=failure)
    assert run(bind([Listen(AudioSocketConnection, "127.0.0.1", 0)], 2), work) == code
    assert message in capfd.readouterr().err
