"""The one store of state that must survive a restart or a failover: the audit trail and the
usage ledger (DESIGN.md, "Delivery and restart guarantees").

An embedded SQLite file by default; PostgreSQL for high availability, where both coordinator
replicas reach one database and so write one trail and one ledger. Chosen by one URL
(``--store``); everything else talks to the :class:`Store` protocol.
"""

from coordinator.store.base import (
    SCHEMA_VERSION,
    Store,
    StoreError,
    StoreUrl,
    Transaction,
    open_store,
)

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "StoreUrl", "Transaction", "open_store"]
