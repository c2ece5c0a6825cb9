"""Readers route addresses by longest prefix while a writer swaps whole tables.

Router threads look up each address in the current table inside `with
domain.read()`; a writer builds a new table off to the side and swaps it in
with `RcuCell.update`, which defers retiring the old table to the domain's
callback thread.  A retired table is poisoned, so a reader that still used
it would notice; the run fails if one ever did.

    python examples/routing_table/router.py --seconds 3
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import threading
import time

import aiorcu

Network = ipaddress.IPv4Network


class Table:
    def __init__(self, routes: dict[Network, str]) -> None:
        # Longest prefix first, so the first match is the best one.
        self.routes = sorted(routes.items(), key=lambda item: -item[0].prefixlen)
        self.retired = False

    def route(self, address: ipaddress.IPv4Address) -> str:
        for network, hop in self.routes:
            if address in network:
                return hop
        return "default"

    def retire(self) -> None:
        self.retired = True
        self.routes = []


def build(generation: int) -> Table:
    rng = random.Random(generation)
    routes = {Network("10.0.0.0/8"): "core"}
    for _ in range(32):
        prefix = rng.randrange(16, 25)
        base = ipaddress.IPv4Address(rng.randrange(10 << 24, 11 << 24))
        routes[Network(f"{base}/{prefix}", strict=False)] = f"hop-{generation}"
    return Table(routes)


def run(seconds: float, readers: int = 3, domain: aiorcu.Domain | None = None) -> dict[str, int]:
    domain = domain if domain is not None else aiorcu.Domain(name="routes")
    cell = aiorcu.RcuCell(build(0), domain=domain)
    stop = threading.Event()
    counts = {"lookups": 0, "swaps": 0, "stale": 0}
    lock = threading.Lock()

    def router(seed: int) -> None:
        rng = random.Random(seed)
        lookups = stale = 0
        while not stop.is_set():
            address = ipaddress.IPv4Address(rng.randrange(10 << 24, 11 << 24))
            with domain.read():
                table = cell.get()
                table.route(address)
                if table.retired:
                    stale += 1
            lookups += 1
        with lock:
            counts["lookups"] += lookups
            counts["stale"] += stale

    def writer() -> None:
        generation = 0
        while not stop.is_set():
            generation += 1
            new = build(generation)

            def swap(_old: Table, new: Table = new) -> Table:
                return new

            cell.update(swap, retire=Table.retire)
            counts["swaps"] += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=router, args=(i,)) for i in range(readers)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    domain.barrier_blocking()
    return counts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    result = run(parser.parse_args().seconds)
    print(
        f"lookups {result['lookups']}, table swaps {result['swaps']}, "
        f"lookups on a retired table {result['stale']}"
    )
    sys.exit(1 if result["stale"] or not result["swaps"] else 0)
