"""`cryopod exec`, `attach` and `port-forward` as a person runs them, against a real daemon:
pipes, a real pseudo-terminal (raw mode, SIGWINCH), and TCP connections."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import REPO, Daemon
from tests.integration.test_pods import container_config, pod_config, run_pod, teardown
from tests.integration.test_streaming import start_container, wait_for_log
from tests.support.registry import PushedImages

TIMEOUT = 20.0

Pod = tuple[Daemon, str, cri.PodSandboxConfig, str]


@pytest.fixture
def pod(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> Iterator[Pod]:
    """A running pod: (daemon, pod id, its config, the busybox image)."""
    image = test_images.ref("busybox")
    daemon.pull(image)
    config = pod_config("cli-streams", tmp_path / "logs", cgroup_parent)
    pod_id = run_pod(daemon, config)
    try:
        yield daemon, pod_id, config, image
    finally:
        teardown(daemon, pod_id)


@pytest.fixture
def sleeper(pod: Pod) -> tuple[Daemon, str]:
    daemon, pod_id, config, image = pod
    return daemon, start_container(
        daemon, pod_id, config, container_config("sleeper", image, "sleep 300")
    )


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cryopod", *args]


def cli_env(daemon: Daemon) -> dict[str, str]:
    return {**os.environ, "CONTAINER_RUNTIME_ENDPOINT": daemon.endpoint}


def run_cli(
    daemon: Daemon, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The CLI with `stdin` piped in (or no stdin at all), its output captured."""
    return subprocess.run(
        cli_command(*args),
        env=cli_env(daemon),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=TIMEOUT * 3,
        cwd=REPO,
    )


def read_until(fd: int, pattern: bytes, seen: bytearray, timeout: float = TIMEOUT) -> bytes:
    """Read `fd` into `seen` until `pattern` (a regex) matches what came after the last call;
    the matching text."""
    deadline = time.monotonic() + timeout
    start = len(seen)
    while (found := re.search(pattern, seen[start:])) is None:
        left = deadline - time.monotonic()
        assert left > 0, f"{pattern!r} never came; got {bytes(seen[start:])!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"end of output before {pattern!r}; got {bytes(seen[start:])!r}"
            seen += chunk
    return found.group(0)


def set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


# --- exec -----------------------------------------------------------------------------------------


def test_exec_keeps_outputs_apart_and_exits_with_the_code(sleeper: tuple[Daemon, str]) -> None:
    daemon, ctr = sleeper
    result = run_cli(daemon, "exec", ctr[:12], "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert run_cli(daemon, "exec", ctr, "true").returncode == 0


def test_exec_interactive_pipes_stdin_through(sleeper: tuple[Daemon, str]) -> None:
    daemon, ctr = sleeper
    data = b"".join(b"line %d\n" % n for n in range(50000))  # several hundred KiB
    result = run_cli(daemon, "exec", "-i", ctr, "sh", "-c", "cat; echo done >&2", stdin=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    assert result.stderr == b"done\n"
    # Without -i the command gets no stdin: cat ends at once.
    assert run_cli(daemon, "exec", ctr, "cat", stdin=b"ignored\n").stdout == b""


def test_exec_output_into_a_closed_pipe(sleeper: tuple[Daemon, str]) -> None:
    daemon, ctr = sleeper
    exec_yes = " ".join(cli_command("exec", ctr, "yes"))
    result = subprocess.run(
        ["bash", "-c", f"{exec_yes} | head -c 4; code=${{PIPESTATUS[0]}}; echo; echo $code"],
        env=cli_env(daemon),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT * 3,
        cwd=REPO,
    )
    assert result.stdout == b"y\ny\n\n141\n"  # SIGPIPE's 128 + 13
    assert result.stderr == b""


def test_exec_sync(sleeper: tuple[Daemon, str]) -> None:
    daemon, ctr = sleeper
    result = run_cli(daemon, "exec", "--sync", ctr, "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (result.returncode, result.stdout, result.stderr) == (4, b"out\n", b"err\n")
    started = time.monotonic()
    timed_out = run_cli(daemon, "exec", "-s", "--timeout", "1", ctr, "sleep", "60")
    assert timed_out.returncode == 1
    assert b"DEADLINE_EXCEEDED" in timed_out.stderr
    assert time.monotonic() - started < 15


def test_exec_errors(sleeper: tuple[Daemon, str]) -> None:
    daemon, ctr = sleeper
    unknown = run_cli(daemon, "exec", "0" * 64, "true")
    assert unknown.returncode == 1 and b"NOT_FOUND" in unknown.stderr
    missing = run_cli(daemon, "exec", ctr, "no-such-program")
    assert missing.returncode != 0 and missing.stderr


def test_exec_tty_in_a_real_terminal(sleeper: tuple[Daemon, str]) -> None:
    """`exec -it ID sh` on a pseudo-terminal that is the CLI's controlling terminal: the shell
    sees the size, a resize of the terminal reaches it through SIGWINCH, `exit 5` ends the CLI
    with 5, and the terminal's mode is back as it was."""
    daemon, ctr = sleeper
    master, slave = os.openpty()
    set_size(slave, 31, 97)
    before = termios.tcgetattr(slave)
    # setsid -c: a session of its own with the pty as controlling terminal, so the kernel
    # sends SIGWINCH to the CLI when the size changes.
    proc = subprocess.Popen(
        ["setsid", "-c", "-w", *cli_command("exec", "-it", ctr, "sh")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(daemon),
        cwd=REPO,
    )
    seen = bytearray()
    try:
        read_until(master, rb"# ", seen)
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & (termios.ECHO | termios.ICANON), "the local terminal is not raw"
        os.write(master, b"stty size\r")
        read_until(master, rb"31 97\r\n", seen)

        set_size(master, 42, 133)  # the kernel signals the terminal's foreground group
        deadline = time.monotonic() + TIMEOUT
        while True:
            os.write(master, b"stty size\r")
            size = read_until(master, rb"\d+ \d+\r\n", seen)
            if size == b"42 133\r\n" or time.monotonic() > deadline:
                break
        assert size == b"42 133\r\n", bytes(seen)

        os.write(master, b"exit 5\r")
        assert proc.wait(timeout=TIMEOUT) == 5, bytes(seen)
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


# --- attach ---------------------------------------------------------------------------------------


def test_attach_sends_stdin_and_shows_output(pod: Pod, tmp_path: Path) -> None:
    daemon, pod_id, config, image = pod
    echo = container_config(
        "echo", image, "echo ready; while read line; do echo got:$line; done; echo bye; exit 6"
    )
    echo.stdin = True
    echo.stdin_once = True  # closing our stdin closes the container's: the loop ends
    ctr = start_container(daemon, pod_id, config, echo)
    wait_for_log(tmp_path / "logs" / "echo" / "0.log", "ready")
    result = run_cli(daemon, "attach", "-i", ctr, stdin=b"ping\npong\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"got:ping\ngot:pong\nbye\n"


def test_attach_without_stdin_to_a_container_created_with_it(pod: Pod) -> None:
    daemon, pod_id, config, image = pod
    ctr = start_container(daemon, pod_id, config, container_config("plain", image, "sleep 300"))
    refused = run_cli(daemon, "attach", "-i", ctr, stdin=b"x\n")
    assert refused.returncode == 1
    assert b"was not created with stdin" in refused.stderr


# --- port-forward ---------------------------------------------------------------------------------


def echo_through(port: int, text: bytes) -> bytes:
    """Send `text` to 127.0.0.1:`port` and read what comes back until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(text)
        conn.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := conn.recv(65536):
            received += chunk
        return bytes(received)


def test_port_forward_to_a_server_in_the_pod(pod: Pod) -> None:
    daemon, pod_id, config, image = pod
    start_container(
        daemon, pod_id, config, container_config("server", image, "nc -ll -p 8080 -e cat")
    )
    proc = subprocess.Popen(
        cli_command("port-forward", pod_id[:12], ":8080"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(daemon),
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen = bytearray()
    try:
        line = read_until(
            proc.stdout.fileno(), rb"Forwarding from 127\.0\.0\.1:\d+ -> 8080\n", seen
        )
        local = int(line.split(b":")[1].split()[0])
        deadline = time.monotonic() + TIMEOUT
        while echo_through(local, b"first\n") != b"first\n":
            assert time.monotonic() < deadline, "nc never answered"  # not listening yet
            time.sleep(0.2)
        assert echo_through(local, b"second connection\n") == b"second connection\n"
        with socket.create_connection(("127.0.0.1", local), timeout=TIMEOUT) as open_conn:
            open_conn.sendall(b"still open\n")
            assert open_conn.recv(100) == b"still open\n"
            # Ctrl-C with a connection open: it is closed, the CLI ends quietly.
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=TIMEOUT) == 130
            assert open_conn.recv(100) == b""
        output = bytes(seen) + proc.stdout.read()
        assert output.count(f"Handling connection for {local}\n".encode()) >= 3, output
        errors = proc.stderr.read()
        assert b"Traceback" not in errors, errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_port_forward_to_an_unknown_pod(daemon: Daemon) -> None:
    result = run_cli(daemon, "port-forward", "0" * 64, "8080")
    assert result.returncode == 1
    assert b"NOT_FOUND" in result.stderr
