"""Child processes for the cross-process tests, driven line by line.

A child runs a short script (with ``say()`` and ``hear()`` predefined) in a
fresh interpreter, so it attaches to shared domains the way a worker
process does: by name, after ``exec``.  The parent waits for the lines the
script says, with a deadline, and can answer it or kill it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import aiorcu

PRELUDE = """\
import os, sys, time, threading
import aiorcu

def say(*words):
    print(*words, flush=True)

def hear():
    return sys.stdin.readline().strip()
"""


def unique_name(tag: str) -> str:
    """A shared domain name no other test (or run) uses."""
    return f"test-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Child:
    """A Python child process running ``script``; see the module docstring."""

    def __init__(self, script: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.said: list[str] = []
        self._pending = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str, timeout: float = 20.0) -> str:
        """Waits for a line starting with ``prefix``; returns the rest of it."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline, prefix)
            self.said.append(line)
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def expect_each(self, *prefixes: str, timeout: float = 20.0) -> dict[str, str]:
        """Waits for a line starting with each prefix, in any order (a fork's
        two processes write to one pipe); returns the rest of each."""
        deadline = time.monotonic() + timeout
        found: dict[str, str] = {}
        while len(found) < len(prefixes):
            line = self._line(deadline, " or ".join(p for p in prefixes if p not in found))
            self.said.append(line)
            for prefix in prefixes:
                if prefix not in found and line.startswith(prefix):
                    found[prefix] = line[len(prefix) :].strip()
                    break
        return found

    def _line(self, deadline: float, prefix: str) -> str:
        # Our own buffer over the raw pipe: a buffered reader would hold
        # lines that select() no longer reports.
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(
                    f"child {self.pid} did not say the expected line within the time; it "
                    f"said {self.said} (waiting for {prefix!r}); {self._stderr()}"
                )
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(
                    f"child {self.pid} ended (code {self.proc.wait()}) before saying "
                    f"{prefix!r}; it said {self.said}; {self._stderr()}"
                )
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode(errors="replace")

    def send(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL, and reap: the process is gone when this returns."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def finish(self, timeout: float = 20.0) -> int:
        """Waits for a normal exit; returns the exit code."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"child {self.pid} did not exit; it said {self.said}") from None
        return code

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return "stderr: " + self.proc.stderr.read()[-2000:]


@contextmanager
def children() -> Iterator[list[Child]]:
    """A list to append children to; every one still running is killed at the end."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            if child.proc.poll() is None:
                child.kill()
            for stream in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
                if stream is not None:
                    stream.close()


@contextmanager
def shared_domain(tag: str, **kwargs: object) -> Iterator[aiorcu.SharedDomain]:
    """A new shared domain for one test; closed (when possible) and unlinked after."""
    domain = aiorcu.SharedDomain(unique_name(tag), create=True, **kwargs)  # type: ignore[arg-type]
    try:
        yield domain
    finally:
        # A test may leave something open on purpose; the unlink still counts.
        with suppress(aiorcu.RcuUsageError):
            domain.close()
        with suppress(FileNotFoundError):
            domain.unlink()


def wait_until(predicate: object, timeout: float = 10.0, what: str = "condition") -> float:
    """Polls ``predicate()`` every millisecond; returns the seconds it took."""
    assert callable(predicate)
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.001)
    return time.monotonic() - start
