"""Stress run: readers check that nothing they hold is retired under them.

A minimal rcutorture-style run.  Reader threads hold the published object
inside read sections; a writer publishes, waits for a grace period, then
retires the old object.  Any reader that sees a retired object is an error,
and the run exits non-zero.  ``--busted`` breaks the grace period on purpose;
with ``--expect-failure`` the run succeeds only if that error is caught.
"""

from __future__ import annotations

import argparse
import threading
import time

import aiorcu

from . import _testing


class _Item:
    __slots__ = ("retired",)

    def __init__(self) -> None:
        self.retired = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to run (default: 5)")
    parser.add_argument("--readers", type=int, default=4, help="reader threads (default: 4)")
    parser.add_argument("--busted", action="store_true", help="grace periods do not wait")
    parser.add_argument(
        "--expect-failure", action="store_true", help="succeed only if an error was caught"
    )
    parser.add_argument("--report-rss", action="store_true", help="print peak RSS at the end")


def run(args: argparse.Namespace) -> int:
    domain = aiorcu.Domain(name="torture")
    if args.busted:
        _testing.set_busted(domain)
    current = [_Item()]
    errors = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def reader() -> None:
        n = 0
        while not stop.is_set():
            with domain.read():
                item = current[0]
                if n % 32 == 0:
                    time.sleep(0)  # let the writer run while this section is open
                if item.retired:
                    with lock:
                        errors[0] += 1
            n += 1

    def writer() -> None:
        while not stop.is_set():
            old, current[0] = current[0], _Item()
            domain.synchronize_blocking()
            old.retired = True

    threads = [threading.Thread(target=reader) for _ in range(args.readers)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    stats = domain.stats()
    print(f"grace periods {stats.grace_periods}, errors {errors[0]}")
    if args.report_rss:
        import resource  # noqa: PLC0415 - Unix-only, needed only here

        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB")
    failed = errors[0] > 0
    return 0 if failed == bool(args.expect_failure) else 1
