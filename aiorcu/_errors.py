"""The exception hierarchy."""

from __future__ import annotations


class AiorcuError(Exception):
    """Base class of every error that aiorcu raises on purpose."""


class RcuUsageError(AiorcuError, RuntimeError):
    """The library was used in a way that would deadlock or be unsafe.

    Raised at once, instead of hanging: a blocking grace period requested from
    inside a read section, a section left on another thread than the one that
    entered it, a protected read made outside any read section.
    """


class GracePeriodTimeout(AiorcuError, TimeoutError):
    """A grace period did not complete within the caller's timeout.

    The domain stays consistent: the abandoned grace period leaves nothing
    behind that a later one would miss.
    """


class TransactionRejected(AiorcuError, ValueError):
    """A well-formed bitmap transaction does not fit the bitmap; nothing applied.

    Attributes:
        index: Position of the first op that does not fit.
        op: That op (a `Grant` or `Revoke`).
    """

    def __init__(self, message: str, *, index: int | None = None, op: object = None) -> None:
        super().__init__(message)
        self.index = index
        self.op = op


class AccessDenied(AiorcuError, PermissionError):
    """Guarded memory touched a page that is not accessible; no byte moved.

    Attributes:
        page: The first page of the access that was not accessible.
    """

    def __init__(self, message: str, *, page: int | None = None) -> None:
        super().__init__(message)
        self.page = page
