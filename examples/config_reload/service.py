"""Hot-reload a validated config; retire the old connection pool only when unused.

Request tasks read the current (config, pool) pair inside `async with
domain.read()` and use a pooled connection across awaits.  A reloader
validates new settings with pydantic, builds a new pool, publishes both with
`RcuCell.replace`, and closes the old pool only after the grace period: no
request can still be using it.  The run fails if any request ever touched a
closed pool.

    python examples/config_reload/service.py --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from dataclasses import dataclass

import pydantic

import aiorcu


class Config(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")
    version: int
    pool_size: int = pydantic.Field(ge=1, le=64)
    greeting: str


class Pool:
    """Stands in for a database connection pool."""

    def __init__(self, size: int) -> None:
        self.connections = [f"conn-{i}" for i in range(size)]
        self.closed = False

    def connection(self, n: int) -> str:
        if self.closed:
            raise RuntimeError("used a closed pool")
        return self.connections[n % len(self.connections)]

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Settings:
    config: Config
    pool: Pool


@dataclass
class Counters:
    requests: int = 0
    reloads: int = 0
    rejected: int = 0
    errors: int = 0


async def handle(
    domain: aiorcu.Domain, cell: aiorcu.RcuCell[Settings], n: int, c: Counters
) -> None:
    async with domain.read():
        settings = cell.get()
        conn = settings.pool.connection(n)
        await asyncio.sleep(0.001)  # the request awaits while holding the connection
        if settings.pool.closed:
            c.errors += 1
        _ = f"{settings.config.greeting} via {conn}"
    c.requests += 1


async def reloader(cell: aiorcu.RcuCell[Settings], c: Counters, stop: asyncio.Event) -> None:
    versions = itertools.count(2)
    while not stop.is_set():
        await asyncio.sleep(0.02)
        version = next(versions)
        raw = json.dumps({"version": version, "pool_size": version % 8 + 1, "greeting": "hi"})
        if version % 5 == 0:  # every fifth reload is invalid and must be refused
            raw = json.dumps({"version": version, "pool_size": 0, "greeting": "hi"})
        try:
            config = Config.model_validate_json(raw)
        except pydantic.ValidationError:
            c.rejected += 1
            continue
        await cell.replace(
            Settings(config, Pool(config.pool_size)), retire=lambda s: s.pool.close()
        )
        c.reloads += 1


async def main(seconds: float, domain: aiorcu.Domain | None = None) -> Counters:
    domain = domain if domain is not None else aiorcu.Domain(name="config")
    first = Config(version=1, pool_size=4, greeting="hello")
    cell = aiorcu.RcuCell(Settings(first, Pool(first.pool_size)), domain=domain)
    counters = Counters()
    stop = asyncio.Event()

    async def clients() -> None:
        n = 0
        while not stop.is_set():
            await asyncio.gather(*(handle(domain, cell, n + i, counters) for i in range(20)))
            n += 20

    reload_task = asyncio.create_task(reloader(cell, counters, stop))
    client_task = asyncio.create_task(clients())
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(reload_task, client_task)
    return counters


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    c = asyncio.run(main(parser.parse_args().seconds))
    print(
        f"requests {c.requests}, reloads {c.reloads}, invalid configs refused {c.rejected}, "
        f"requests that saw a closed pool {c.errors}"
    )
    sys.exit(1 if c.errors or not c.reloads else 0)
