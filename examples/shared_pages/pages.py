"""What the worker processes and the launcher agree on: the pages, their format, the names.

The launcher (`demo.py`) creates a `SharedDomain` and a `SharedMemory`
segment holding a `GuardedMemory`; it passes both names to the workers
(`app.py`) in environment variables, and every worker attaches by name.

Each page carries its own proof of integrity, so that whoever receives a
page can tell whether it is whole: a header (``b"PAGE"``, the page number,
a generation that changes each time the page is rewritten), pseudo-random
bytes derived from (page, generation), and a SHA-256 of everything before
it.  A scribble (what a worker wipes a revoked page with, as a pool does
before it hands the page to a new tenant) is the repeated word
``SCRIBBLE``.  A response that holds scribbled bytes, or chunks of two
generations of a page, fails `problem()`.
"""

from __future__ import annotations

import hashlib
import random
import struct
import sys
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import aiorcu

PAGES = 16
PAGE_SIZE = 16384
CHUNK = 4096  # a worker serves a page in PAGE_SIZE // CHUNK reads
CHUNKS = PAGE_SIZE // CHUNK

# Where the pages are in the buffer: a GuardedMemory buffer is a header, the
# bitmap and then the pages, so they are its last PAGES * PAGE_SIZE bytes.
# Only the writes to revoked pages (the workers' wipes, the launcher's
# rewrites) and the workers' checks use this offset; the launcher checks it
# against mem.write() before it starts anything.
BUFFER_SIZE = aiorcu.GuardedMemory.buffer_size(PAGES, PAGE_SIZE)
DATA_OFFSET = BUFFER_SIZE - PAGES * PAGE_SIZE

ENV_DOMAIN = "SHARED_PAGES_DOMAIN"  # the SharedDomain's name
ENV_MEMORY = "SHARED_PAGES_MEMORY"  # the SharedMemory's name
ENV_BUSTED = "SHARED_PAGES_BUSTED"  # "1": the workers' grace periods do not wait

_HEADER = struct.Struct("<4sII")  # magic, page number, generation
_DIGEST = 32
POISON = b"SCRIBBLE"
SCRIBBLE = (POISON * (PAGE_SIZE // len(POISON) + 1))[:PAGE_SIZE]


def page_content(page: int, generation: int) -> bytes:
    """Page ``page`` as written the ``generation``-th time: header, filler, checksum."""
    head = _HEADER.pack(b"PAGE", page, generation)
    filler = random.Random(page << 32 | generation).randbytes(PAGE_SIZE - _HEADER.size - _DIGEST)
    data = head + filler
    return data + hashlib.sha256(data).digest()


def problem(page: int, data: bytes) -> str | None:
    """What is wrong with ``data`` as the content of page ``page``; None if it is whole."""
    if len(data) != PAGE_SIZE:
        return f"{len(data)} bytes, not {PAGE_SIZE}"
    at = data.find(POISON)
    if at >= 0:
        return f"scribbled bytes (first in chunk {at // CHUNK} of {CHUNKS})"
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        return "torn: the checksum does not match (chunks of two versions of the page)"
    magic, number, _generation = _HEADER.unpack_from(data)
    if magic != b"PAGE" or number != page:
        return f"the content of page {number}, not of page {page}"
    return None


def generation_of(data: bytes) -> int:
    """The generation an intact page's header names."""
    return int(_HEADER.unpack_from(data)[2])


def view(shm: SharedMemory) -> memoryview:
    """The segment's bytes (`SharedMemory.buf` is typed optional: None once closed)."""
    if shm.buf is None:
        raise ValueError(f"shared memory {shm.name!r} is closed")
    return shm.buf


def attach_shared_memory(name: str) -> SharedMemory:
    """Opens the segment ``name`` that another process created, without owning it.

    Before Python 3.13 every process that opens a segment registers it with
    its resource tracker, which unlinks it when the process's family exits:
    a worker would remove the launcher's segment.  Only the creator unlinks.
    """
    if sys.version_info >= (3, 13):
        return SharedMemory(name, track=False)
    shm = SharedMemory(name)
    resource_tracker.unregister("/" + shm.name, "shared_memory")
    return shm
