"""aiorcu: read-copy-update for asyncio, trio and threads.

Readers enter cheap read sections that never block; writers publish a change
and wait for a grace period before acting on it (freeing, revoking, telling
hardware).  Built on a C core that uses Linux membarrier(2) so readers run no
memory barriers at all.
"""

from ._bitmap import Bitmap, BitmapTransactionBuilder
from ._cell import RcuCell
from ._domain import Domain, backend_info, global_domain
from ._errors import (
    AccessDenied,
    AiorcuError,
    GracePeriodTimeout,
    RcuUsageError,
    TransactionRejected,
)
from ._hotpath import ReadSection
from ._memory import GuardedMemory
from ._records import BackendInfo, DomainStatistics
from ._shared import SharedDomain
from ._transaction import BitmapTransaction, CommitReport, Grant, Revoke

__all__ = [
    "AccessDenied",
    "AiorcuError",
    "BackendInfo",
    "Bitmap",
    "BitmapTransaction",
    "BitmapTransactionBuilder",
    "CommitReport",
    "Domain",
    "DomainStatistics",
    "GracePeriodTimeout",
    "Grant",
    "GuardedMemory",
    "RcuCell",
    "RcuUsageError",
    "ReadSection",
    "Revoke",
    "SharedDomain",
    "TransactionRejected",
    "backend_info",
    "global_domain",
]

__version__ = "0.1.0"

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("aiorcu."):
        _obj.__module__ = "aiorcu"
del _name, _obj
