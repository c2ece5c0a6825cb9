"""SharedDomain under faults: deaths, exec, fork, damaged segments, permissions.

Every test here attacks a promise of DESIGN.md ("Shared domains") from
another process: a reader or writer killed at the worst moment, a process
that execs or exits without closing, forks while sections are open, a
segment that is not what it claims, a user who may not open it.  The other
processes are fresh interpreters (tests/children.py); a test that could
crash the interpreter runs its attack in a child and checks how it ended.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time
from multiprocessing import shared_memory
from pathlib import Path

import pytest

import aiorcu

from .children import Child, children, shared_domain, unique_name, wait_until
from .conftest import background_synchronize

HALF_A_SECOND = 0.5  # DESIGN.md: grace periods complete within 0.5 s of a death

# A reader process with sections open in two threads and in a task, which
# then dies the way the test asks (SIGKILL from the test, os._exit, exec,
# or returning from the script with the sections still open in daemons).
MANY_INSIDE = """
import asyncio
d = aiorcu.SharedDomain(os.environ["NAME"])
end = os.environ["END"]
inside = threading.Barrier(3)
def hold():
    with d.read():
        inside.wait()
        time.sleep(3600)
for i in range(2):
    threading.Thread(target=hold, name=f"holder-{i}", daemon=True).start()
inside.wait()
async def main():
    async with d.read():
        say("inside")
        await asyncio.get_running_loop().run_in_executor(None, hear)
        if end == "exit":
            os._exit(0)
        if end == "exec":
            os.execv("/bin/sleep", ["sleep", "30"])
        if end == "return":
            # Leaves this task's section; the daemon threads stay inside
            # while the interpreter exits.
            return
asyncio.run(main())
"""


def _readers_end(end: str, domain: aiorcu.SharedDomain, child: Child) -> float:
    """Makes the child's readers end as ``end`` says; returns when that began."""
    began = time.monotonic()
    if end == "kill":
        os.kill(child.pid, 9)  # not reaped yet: a zombie must count as dead
    else:
        child.send()
    return began


@pytest.mark.parametrize("end", ["kill", "exit", "exec", "return"])
def test_a_reader_process_that_ends_inside_releases_grace_periods_within_half_a_second(
    end: str,
) -> None:
    with shared_domain(f"end-{end}") as domain, children() as kids:
        kids.append(child := Child(MANY_INSIDE, env={"NAME": domain.name, "END": end}))
        child.expect("inside")
        before = domain.stats()
        assert before.readers_active == 3 and before.processes_attached == 2
        writer = background_synchronize(domain)
        time.sleep(0.3)
        assert not writer.done.is_set(), (
            "a grace period ended while another process's readers were inside"
        )
        began = _readers_end(end, domain, child)
        assert writer.finished(10), (
            "the grace period never completed after the readers' process ended"
        )
        writer.result()
        assert writer.finished_at is not None
        took = writer.finished_at - began
        assert took <= HALF_A_SECOND, f"the grace period took {took:.3f} s after the end"
        after = domain.stats()
        if end == "exec":
            # The pid lives on as /bin/sleep: only proof of death (the
            # lifeline released by exec) can have released its sections.
            assert child.proc.poll() is None
        if end in ("kill", "exit", "exec"):
            assert after.dead_readers_released == before.dead_readers_released + 1
        assert after.backstop_timeouts == 0
        assert after.readers_active == 0
        assert after.processes_attached == 1
        # Later grace periods see nobody: the released slots stay released.
        domain.synchronize_blocking(timeout=5)
        child.kill()


def test_a_writer_killed_holding_the_writer_lock_mid_grace_period() -> None:
    script = """
    d = aiorcu.SharedDomain(os.environ["NAME"])
    say("syncing")
    d.synchronize_blocking()
    say("synced")
    """
    with shared_domain("dead-writer") as domain, children() as kids:
        entered, release = threading.Event(), threading.Event()

        def reader() -> None:
            with domain.read():
                entered.set()
                release.wait()

        holder = threading.Thread(target=reader, name="live-reader")
        holder.start()
        entered.wait()
        try:
            kids.append(child := Child(script, env={"NAME": domain.name}))
            child.expect("syncing")
            # Its grace period waits for our reader, holding the writer lock.
            time.sleep(0.3)
            assert child.proc.poll() is None and "synced" not in child.said
            child.kill()
            assert domain.stats().writer_recoveries == 0
            # The next writer takes over the lock; its grace period must
            # still wait for the reader the dead writer was waiting for.
            writer = background_synchronize(domain)
            time.sleep(0.3)
            assert not writer.done.is_set(), (
                "a recovered writer's grace period ignored a live reader"
            )
            left_at = time.monotonic()
            release.set()
            assert writer.finished(10)
            writer.result()
            assert writer.finished_at is not None and writer.finished_at >= left_at
        finally:
            release.set()
            holder.join()
        stats = domain.stats()
        assert stats.writer_recoveries == 1
        assert stats.backstop_timeouts == 0
        domain.synchronize_blocking(timeout=5)


def test_a_committer_killed_holding_the_commit_lock(caplog: pytest.LogCaptureFixture) -> None:
    """A revoke stored by a committer that died is flushed by the next commit."""
    pages = 8
    script = """
    from multiprocessing import shared_memory
    d = aiorcu.SharedDomain(os.environ["NAME"])
    shm = shared_memory.SharedMemory(os.environ["SHM"])
    # Before 3.13 attaching registers the block with this process's resource
    # tracker, which would unlink it when this process dies.
    from multiprocessing import resource_tracker
    resource_tracker.unregister(shm._name, "shared_memory")
    mem = aiorcu.GuardedMemory.attach(shm.buf, domain=d)
    core = mem.bitmap._core
    core.lock(False)
    core.apply([(3, 1, False)])  # page 3 revoked; the committer dies before its grace period
    say("applied")
    time.sleep(3600)
    """
    size = aiorcu.GuardedMemory.buffer_size(pages)
    with shared_domain("dead-committer") as domain, children() as kids:
        shm = shared_memory.SharedMemory(create=True, size=size)
        try:
            mem = aiorcu.GuardedMemory(pages, domain=domain, initial=True, buffer=shm.buf)
            entered, release = threading.Event(), threading.Event()

            def reader() -> None:
                with domain.read():
                    mem.read(3 * 4096, 8)  # it sees page 3 accessible
                    entered.set()
                    release.wait()

            holder = threading.Thread(target=reader, name="page-3-reader")
            holder.start()
            entered.wait()
            try:
                env = {"NAME": domain.name, "SHM": shm.name}
                kids.append(child := Child(script, env=env))
                child.expect("applied")
                child.kill()
                with pytest.raises(aiorcu.AccessDenied):
                    mem.read(3 * 4096, 8)  # a new reader sees the stored revoke
                reports: list[aiorcu.CommitReport] = []

                def commit() -> None:
                    tx = aiorcu.BitmapTransaction(ops=[aiorcu.Revoke(start=3, count=1)])
                    reports.append(mem.bitmap.commit_blocking(tx))

                with caplog.at_level(logging.WARNING, logger="aiorcu"):
                    committer = threading.Thread(target=commit)
                    committer.start()
                    time.sleep(0.3)
                    # The dead committer never flushed page 3: this commit
                    # must not return while the page-3 reader is inside.
                    assert not reports, "a commit returned before the dead revoke was flushed"
                    release.set()
                    committer.join(10)
                assert reports and reports[0].synchronized
                assert "a process died while committing" in caplog.text
            finally:
                release.set()
                holder.join()
            mem.close()
        finally:
            shm.close()
            shm.unlink()


def test_a_fork_pool_started_while_another_thread_is_inside() -> None:
    """Fork children reset nothing: the parent's open section still holds grace periods."""
    script = """
    import multiprocessing as mp
    d = aiorcu.SharedDomain(os.environ["NAME"])
    entered, release = threading.Event(), threading.Event()
    def hold():
        with d.read():
            entered.set()
            release.wait()
    holder = threading.Thread(target=hold, name="holder")
    holder.start()
    entered.wait()
    def work(i):
        with d.read():
            pass
        try:
            d.synchronize_blocking(timeout=0.3)
            return "completed"
        except aiorcu.GracePeriodTimeout:
            return "waited"
    with mp.get_context("fork").Pool(2) as pool:
        say("workers", *pool.map(work, range(2)))
        hear()
        release.set()
        holder.join()
        say("released")
        hear()
    """
    with shared_domain("fork-pool") as domain, children() as kids:
        kids.append(child := Child(script, env={"NAME": domain.name}))
        # In the workers, a grace period waits for the parent's holder.
        assert child.expect("workers") == "waited waited"
        assert domain.stats().processes_attached >= 3
        writer = background_synchronize(domain)
        time.sleep(0.3)
        assert not writer.done.is_set(), (
            "after a fork, a grace period ignored the forking process's reader"
        )
        child.send()
        child.expect("released")
        assert writer.finished(10)
        writer.result()
        child.send()
        assert child.finish() == 0
        stats = domain.stats()
        assert stats.processes_attached == 1 and stats.backstop_timeouts == 0


def test_a_fork_from_inside_a_section_keeps_it_in_the_child(tmp_path: Path) -> None:
    """The forking thread's section lives on in the child until the child leaves it."""
    go = tmp_path / "go"
    script = """
    d = aiorcu.SharedDomain(os.environ["NAME"])
    go = os.environ["GO"]
    with d.read():
        pid = os.fork()
        if pid == 0:
            try:
                d.synchronize_blocking(timeout=1)
                os.write(1, b"child synced\\n")
            except aiorcu.RcuUsageError:
                os.write(1, b"child refused\\n")
            while not os.path.exists(go):
                time.sleep(0.005)
    if pid == 0:
        os.write(1, b"child left\\n")
        os._exit(0)
    say("forked", pid)
    hear()
    os.waitpid(pid, 0)
    """
    with shared_domain("fork-inside") as domain, children() as kids:
        kids.append(child := Child(script, env={"NAME": domain.name, "GO": str(go)}))
        seen = child.expect_each("forked", "child ")
        assert seen["child "] == "refused"  # the child is inside: its own wait would hang
        writer = background_synchronize(domain)
        time.sleep(0.3)
        assert not writer.done.is_set(), "a grace period ignored the section a fork child kept"
        go.touch()
        child.expect("child left")
        assert writer.finished(10)
        writer.result()
        child.send()
        assert child.finish() == 0
        assert domain.stats().backstop_timeouts == 0


def test_a_segment_another_user_may_not_open(tmp_path: Path) -> None:
    """Tested as an unprivileged user: root would open any segment."""
    script = """
    name, wide = os.environ["NAME"], os.environ["WIDE"]
    os.setgid(65534)
    os.setuid(65534)
    for n in (name, wide):
        try:
            d = aiorcu.SharedDomain(n)
            with d.read():
                pass
            d.synchronize_blocking(timeout=5)
            d.close()
            say(n, "attached")
        except PermissionError as exc:
            say(n, "refused", exc)
    """
    with (
        shared_domain("perm-private") as private,
        shared_domain("perm-wide", mode=0o666) as wide,
        children() as kids,
    ):
        kids.append(child := Child(script, env={"NAME": private.name, "WIDE": wide.name}))
        refused = child.expect(private.name)
        assert refused.startswith("refused") and "may not open shared domain segment" in refused
        assert "0o600" in refused and "wider mode" in refused
        assert child.expect(wide.name) == "attached"  # the positive control
        assert child.finish() == 0


# The header of a segment (csrc/shared.c, struct seg_header).
MAGIC, VERSION, MECHANISM, SIZE, MAX_THREADS, MAX_PROCS = 0, 8, 12, 16, 24, 28
SLOTS_OFF, NAME_AT, READY, HEADER = 48, 56, 184, 192

FUZZ = """
import mmap, random, struct, threading
name, donor_name = os.environ["NAME"], os.environ["DONOR"]
path = "/dev/shm/aiorcu-" + name
donor = open("/dev/shm/aiorcu-" + donor_name, "rb").read()
HEADER = int(os.environ["HEADER"])
rng = random.Random(int(os.environ["SEED"]))

def attempt(label, content):
    with open(path, "wb") as f:
        f.write(content)
    try:
        d = aiorcu.SharedDomain(name)
    except aiorcu.AiorcuError as exc:
        say("case", label, "refused:", str(exc).replace(chr(10), " "))
        return
    except Exception as exc:
        say("case", label, "unexpected:", type(exc).__name__, exc)
        return
    # Accepted (a flip that changed nothing checked): it must still work or
    # refuse cleanly; a deadline bounds the wait on a damaged segment.
    try:
        with d.read():
            pass
        d.synchronize_blocking(timeout=0.5)
        outcome = "works"
    except (aiorcu.AiorcuError, OSError) as exc:
        outcome = "refused later: " + type(exc).__name__
    try:
        d.close()
    except aiorcu.AiorcuError:
        pass
    say("case", label, "accepted:", outcome)

def patched(at, fmt, value, base=None):
    b = bytearray(own if base is None else base)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)

# The donor under this domain's name: each case below damages one thing.
own = donor
own = patched(56, "128s", name.encode())

attempt("empty", b"")
attempt("tiny", b"x" * 100)
attempt("foreign", bytes(rng.randrange(256) for _ in range(1 << 16)))
attempt("truncated", donor[: len(donor) // 2])
attempt("magic", patched(0, "<Q", 0x1234))
attempt("version", patched(8, "<I", 99))
attempt("mechanism", patched(12, "<I", 77))
attempt("threads", patched(24, "<I", 1 << 30))
attempt("procs", patched(28, "<I", 3))
attempt("offsets", patched(48, "<Q", 1 << 40))
attempt("size", patched(16, "<Q", 1 << 50))
attempt("name", patched(56, "128s", b"z" * 128))
attempt("other-name", donor)
attempt("unformatted", patched(184, "<I", 0))
for i in range(int(os.environ["FLIPS"])):
    b = bytearray(own)
    for _ in range(rng.randrange(1, 4)):
        b[rng.randrange(HEADER)] ^= 1 << rng.randrange(8)
    attempt(f"flip-{i}", bytes(b))
# A slot that claims an owner outside the segment's process table, with
# counts that look inside: the writer releases it, never follows it.
b = bytearray(own)
slots = struct.unpack_from("<Q", b, 48)[0]
struct.pack_into("<QQ", b, slots, 1, 1)  # thread sections open in both phases
struct.pack_into("<iiIB", b, slots + 80, 1 << 20, 4242, 7, 1)
attempt("slot-owner", bytes(b))

# A slot that claims to be this very process's, with a forged owner-record
# pointer: a process never follows a pointer read from the segment, so
# neither a full table (which reclaims dead threads' slots) nor a writer's
# wait (whose janitor looks for them) may touch it.
with open(path, "wb") as f:
    f.write(own)
d = aiorcu.SharedDomain(name)
with d.read():
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        mine = [i for i in range(4) if struct.unpack_from("<B", m, slots + i * 128 + 92)[0]]
        proc, pid, gen = struct.unpack_from("<iiI", m, slots + mine[0] * 128 + 80)
        forged = next(i for i in range(4) if i not in mine)
        at = slots + forged * 128
        struct.pack_into("<QQ", m, at, 1, 1)
        struct.pack_into("<QQiiIB", m, at + 64, 0xDEADBEEF0, 1, proc, pid, gen, 1)
    inside, release = threading.Barrier(3), threading.Event()
    def hold():
        with d.read():
            inside.wait()
            release.wait()
    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    inside.wait()
    errors = []
    def fifth():
        try:
            with d.read():
                pass
        except aiorcu.AiorcuError as exc:
            errors.append(exc)
    t = threading.Thread(target=fifth)
    t.start()
    t.join()
    release.set()
    for t in holders:
        t.join()
say("case", "own-slot-full", "refused:" if errors else "accepted:", *errors)
try:
    d.synchronize_blocking(timeout=0.5)
    say("case", "own-slot-wait", "accepted: works")
except aiorcu.GracePeriodTimeout:
    say("case", "own-slot-wait", "refused: timed out")
d.close()
say("end")
"""


def test_no_damaged_segment_crashes_an_attacher_or_sends_it_outside() -> None:
    """Run in a child: a crash there shows as its exit status, not as ours."""
    name, donor_name = unique_name("fuzz"), unique_name("donor")
    donor = aiorcu.SharedDomain(donor_name, create=True, max_threads=4)
    try:
        env = {
            "NAME": name,
            "DONOR": donor_name,
            "HEADER": str(HEADER),
            "SEED": str(int(time.time())),
            "FLIPS": "150",
        }
        with children() as kids:
            kids.append(child := Child(FUZZ, env=env))
            child.expect("end", timeout=120)
            code = child.finish()
        cases = {
            line.split()[1]: " ".join(line.split()[2:])
            for line in child.said
            if line.startswith("case ")
        }
        assert code == 0, f"the attacher died with {code}; its last cases: {list(cases)[-3:]}"
        unexpected = {k: v for k, v in cases.items() if v.startswith("unexpected")}
        assert not unexpected, unexpected
        expected = {
            "empty": "is empty",
            "tiny": "smaller than its header",
            "foreign": "not an aiorcu domain segment",
            "truncated": "its header says",
            "magic": "not an aiorcu domain segment",
            "version": "layout version 99",
            "mechanism": "unknown barrier mechanism 77",
            "threads": "reader slots",
            "procs": "3 process entries",
            "offsets": "layout does not match",
            "size": "layout does not match",
            "name": "name is not terminated",
            "other-name": f"belongs to domain {donor_name!r}",
            "unformatted": "never completely formatted",
        }
        for label, words in expected.items():
            assert cases[label].startswith("refused:") and words in cases[label], (label, cases)
        assert cases["slot-owner"] == "accepted: works", cases["slot-owner"]
        # It survived the forged pointer; the table was full, and the forged
        # counts look like a section of its own that never ends.
        assert "no free reader slot" in cases["own-slot-full"], cases["own-slot-full"]
        assert cases["own-slot-wait"] == "refused: timed out", cases["own-slot-wait"]
        flips = [v for k, v in cases.items() if k.startswith("flip-")]
        assert len(flips) == 150
    finally:
        donor.close()
        donor.unlink()
        if os.path.exists(f"/dev/shm/aiorcu-{name}"):
            os.unlink(f"/dev/shm/aiorcu-{name}")


def test_the_header_offsets_this_file_uses_match_the_segment() -> None:
    """Guards the fuzz test above: it patches fields at these offsets."""
    with (
        shared_domain("layout", max_threads=4) as domain,
        open(domain.path, "rb") as f,
        mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m,
    ):
        assert struct.unpack_from("<Q", m, MAGIC)[0] == 0x47535543524F4941
        assert struct.unpack_from("<I", m, VERSION)[0] == 1
        assert struct.unpack_from("<II", m, MAX_THREADS) == (4, 4)
        assert struct.unpack_from("<Q", m, SIZE)[0] == os.fstat(f.fileno()).st_size
        assert m[NAME_AT : NAME_AT + len(domain.name)] == domain.name.encode()
        assert struct.unpack_from("<I", m, READY)[0] == 1
        assert struct.unpack_from("<Q", m, SLOTS_OFF)[0] % 64 == 0
        assert struct.unpack_from("<I", m, MECHANISM)[0] in (0, 1, 2)
        assert HEADER > READY
        assert MAX_PROCS == MAX_THREADS + 4


def test_every_process_attached_through_a_test_here_is_gone() -> None:
    """Nothing in this file leaves a segment of its own behind."""
    wait_until(
        lambda: not [p for p in os.listdir("/dev/shm") if f"-{os.getpid()}-" in p],
        timeout=5,
        what="no segments of this test process left",
    )


@pytest.mark.skipif(not aiorcu.backend_info().membarrier, reason="needs membarrier")
def test_a_process_that_cannot_register_for_membarrier_refuses_to_attach() -> None:
    """Its readers would miss the writers' barrier: it must not read at all."""
    script = """
    import errno
    from aiorcu import testing
    testing.fail_membarrier(1, errno.EPERM)
    try:
        aiorcu.SharedDomain(os.environ["NAME"])
        say("attached")
    except aiorcu.AiorcuError as exc:
        say("refused", exc)
    say("entries", aiorcu.SharedDomain(os.environ["NAME"]).stats().processes_attached)
    hear()
    """
    with shared_domain("no-membarrier") as domain, children() as kids:
        kids.append(child := Child(script, env={"NAME": domain.name}))
        refused = child.expect("refused")
        assert "GLOBAL_EXPEDITED failed: [Errno 1]" in refused, refused
        # The refusal took nothing; the next attempt (registration works) joins.
        assert child.expect("entries") == "2"
        child.send()
        assert child.finish() == 0
        assert domain.stats().processes_attached == 1


def test_a_dead_process_slot_rests_before_it_is_claimed_again() -> None:
    """A sibling thread of the dead lifeline may store to its slot a moment
    longer: the slot rests (csrc/internal.h, AIORCU_QUARANTINE_NS) first."""

    def claim() -> BaseException | None:
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                with domain.read():
                    pass
                outcome.append(None)
            except aiorcu.AiorcuError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return outcome[0]

    with shared_domain("rest", max_threads=2) as domain, children() as kids:
        with domain.read():
            pass  # this thread keeps one of the two slots
        kids.append(child := Child(HOLD_ONE, env={"NAME": domain.name}))
        child.expect("inside")
        child.kill()
        assert domain.stats().dead_readers_released == 1  # stats() reaped it
        refused = claim()
        assert refused is not None and "no free reader slot" in str(refused), refused
        start = time.monotonic()
        while claim() is not None:
            time.sleep(0.005)
        rested = time.monotonic() - start
        assert rested < 2, f"the slot rested {rested:.3f} s"
        domain.synchronize_blocking(timeout=5)


HOLD_ONE = """
d = aiorcu.SharedDomain(os.environ["NAME"])
with d.read():
    say("inside")
    time.sleep(3600)
"""
