"""``python -m comfyume.server --processes N``: several web processes on one address, watched by one parent.

Real processes on real sockets: the kernel spreads connections over the children, a stop reaches all of them,
one child's death stops the rest (so a restart policy restarts the whole server), and every bad command line or
setting is refused before anything listens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from comfyume.server import UsageError, split_command_line

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.pid_app:application"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "comfyume.server", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _children(parent: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:  # the process ended while we looked
            continue
        if int(fields.get("PPid", "0")) == parent:
            found.add(int(status.parent.name))
    return found


def _wait_until_answering(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 40
    while True:
        try:
            requests.get(base, timeout=2)
            return
        except requests.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                errors = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                raise RuntimeError(f"the web server did not start: {errors}") from None
            time.sleep(0.1)


@pytest.fixture
def three_processes() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    proc = _start("--processes", "3", "-b", "127.0.0.1", "-p", str(port), APP)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(base, proc)
        # Every child has its own socket: wait until all three have bound (one may answer before the others).
        deadline = time.monotonic() + 40
        while len(_children(proc.pid)) < 3 or len(_pids_answering(base, 60)) < 3:
            assert time.monotonic() < deadline, "three web processes never answered"
            time.sleep(0.2)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(40)


def _pids_answering(base: str, connections: int) -> set[int]:
    """The processes that answered ``connections`` requests, each on a new connection."""
    return {int(requests.get(base, timeout=5, headers={"Connection": "close"}).text) for _ in range(connections)}


def test_connections_are_spread_over_every_web_process(three_processes):
    proc, base = three_processes
    answered = _pids_answering(base, 60)
    assert answered == _children(proc.pid)  # each of the three served some: the kernel spreads new connections


def test_a_stop_reaches_every_web_process_and_the_server_exits_cleanly(three_processes):
    proc, _ = three_processes
    children = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


def test_one_web_process_dying_stops_the_others_and_the_server_exits_with_an_error(three_processes):
    proc, _ = three_processes
    children = sorted(_children(proc.pid))
    os.kill(children[0], signal.SIGKILL)
    assert proc.wait(40) != 0  # the container's (or make run's) restart policy restarts the whole server
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    assert b"ended (exit code -9): stopping the others" in proc.stderr.read()


def test_one_process_is_plain_daphne_on_the_given_address():
    port = _free_port()
    proc = _start("-b", "127.0.0.1", "-p", str(port), APP, env={"COMFYUME_WEB_PROCESSES": "1"})
    try:
        _wait_until_answering(f"http://127.0.0.1:{port}", proc)
        assert _pids_answering(f"http://127.0.0.1:{port}", 5) == {proc.pid}
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((APP,), {"COMFYUME_WEB_PROCESSES": "0"}, "WEB_PROCESSES must be a whole number from 1 to 64, not '0'"),
        ((APP,), {"COMFYUME_WEB_PROCESSES": "two"}, "COMFYUME_WEB_PROCESSES must be a whole number from 1 to 64"),
        (("--processes", "65", APP), {}, "--processes must be a whole number from 1 to 64, not '65'"),
        (("--processes", "2", "-u", "/tmp/x.sock", APP), {}, "listen on -b/-p only"),
        (("--processes", "2", "-b", "::1", "-p", "8000", APP), {}, "need an IPv4 address to bind (-b), not '::1'"),
        (("--processes", "2", "-b", "localhost", APP), {}, "need an IPv4 address to bind (-b), not 'localhost'"),
        (("--processes", "2", "-p", "eighty", APP), {}, "--port must be a number, not 'eighty'"),
    ],
)
def test_a_bad_command_line_or_setting_is_refused_before_anything_listens(args, env, message):
    proc = _start(*args, env=env)
    assert proc.wait(30) == 2
    assert message in proc.stderr.read().decode()


def test_an_address_in_use_stops_the_server_with_the_reason():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _start("--processes", "2", "-b", "127.0.0.1", "-p", str(port), APP)
        assert proc.wait(40) != 0
    assert f"Cannot listen on 127.0.0.1:{port}: Address already in use." in proc.stderr.read().decode()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-b", "0.0.0.0", "-p", "8000", "--proxy-headers", APP], ("0.0.0.0", 8000, ["--proxy-headers", APP])),
        (["--bind=10.0.0.1", "-p8001", "-v", "2", APP], ("10.0.0.1", 8001, ["-v", "2", APP])),
        (["--processes", "4", "--port", "9000", APP], (None, 9000, [APP])),
        ([APP], (None, None, [APP])),
    ],
)
def test_the_address_is_taken_out_of_daphnes_arguments_in_every_spelling(argv, expected, monkeypatch):
    monkeypatch.delenv("COMFYUME_WEB_PROCESSES", raising=False)
    _, child, host, port, rest = split_command_line(argv)
    assert (host, port, rest) == expected and child is False


def test_the_setting_gives_the_default_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv("COMFYUME_WEB_PROCESSES", "3")
    assert split_command_line([APP])[0] == 3
    assert split_command_line(["--processes", "1", APP])[0] == 1
    monkeypatch.setenv("COMFYUME_WEB_PROCESSES", " 2 ")
    assert split_command_line([APP])[0] == 2
    with pytest.raises(UsageError, match="not '-1'"):
        split_command_line(["--processes", "-1", APP])
