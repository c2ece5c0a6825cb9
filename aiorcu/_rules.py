"""When a wait may begin: the checks that turn a deadlock into an error.

A grace period waits for every read section that began before it.  A wait
that some of those sections depend on can never finish: a blocking wait on
a thread inside a section, an async wait inside the calling task's own
section, any wait from a callback (the callback thread would wait for
itself), a barrier inside a section.  `WaitRules` refuses them at once with
an `RcuUsageError` that says what to do instead.  Every wait path of a domain
and of the structures built on it (cells, bitmaps) calls these checks before
it changes anything.
"""

from __future__ import annotations

from typing import Protocol, final

from . import _callbacks
from ._errors import RcuUsageError


class SectionCounts(Protocol):
    """What the rules read from a domain's read path (C: ``_hotpath.DomainBase``)."""

    def _thread_counts(self) -> tuple[int, int]: ...
    def _task_inside(self) -> bool: ...


@final
class WaitRules:
    """The deadlock checks of one domain.

    Args:
        name: The domain's name, for messages.
        sections: The domain's read path, which knows what is open here.
    """

    def __init__(self, name: str, sections: SectionCounts) -> None:
        self._name = name
        self._sections = sections

    def not_in_callback(self, what: str) -> None:
        """Raises if the caller is an RCU callback: it would wait for its own thread."""
        if _callbacks.in_callback():
            raise RcuUsageError(
                f"{what} called from an RCU callback of domain {self._name!r}; callbacks "
                "run on the domain's callback thread, which would wait for itself. Queue "
                "more work with call_after_grace_period() instead"
            )

    def blocking_wait(self, what: str) -> None:
        """Raises if a blocking wait on this thread could never finish."""
        self.not_in_callback(what)
        with_sections, task_sections = self._sections._thread_counts()
        if self._sections._task_inside():
            raise self._own_task_error(what)
        if with_sections:
            raise RcuUsageError(
                f"{what} called inside a `with domain.read():` section on this thread; it "
                "would wait for itself. Leave the section first, or use "
                "call_after_grace_period()"
            )
        if task_sections:
            raise RcuUsageError(
                f"{what} called on an event-loop thread where another task holds an `async "
                f"with` section of domain {self._name!r}; blocking here would stop that task "
                "from ever leaving it. Use `await domain.synchronize()` instead"
            )

    def async_wait(self, what: str) -> None:
        """Raises if an async wait would wait for the calling task's own section.

        Other tasks' ``async with`` sections on this loop do not count: they
        close while this task waits.
        """
        self.not_in_callback(what)
        if self._sections._task_inside():
            raise self._own_task_error(what)
        if self._sections._thread_counts()[0]:
            raise RcuUsageError(
                f"{what} called while this thread has a `with domain.read():` section of "
                f"domain {self._name!r} open (perhaps held across an await by some task); the "
                "grace period would wait for it. Leave `with` sections before awaiting, or "
                "use `async with domain.read():` in task code"
            )

    def barrier(self, what: str, blocking: bool) -> None:
        """Raises if waiting for the callbacks here could never finish."""
        self.not_in_callback(what)
        with_sections, task_sections = self._sections._thread_counts()
        if with_sections or self._sections._task_inside() or (blocking and task_sections):
            raise RcuUsageError(
                f"{what} called inside a read section of domain {self._name!r}; the "
                "callbacks wait for a grace period that waits for this section. "
                "Leave the section first"
            )

    def _own_task_error(self, what: str) -> RcuUsageError:
        return RcuUsageError(
            f"{what} called inside a read section of domain {self._name!r} held by this "
            "task; it would wait for itself. Leave the section first, or use "
            "call_after_grace_period()"
        )
