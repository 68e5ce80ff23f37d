"""Bulk operations: rows in, over, updated and out by the driver's fastest path.

``bulk_insert``, ``bulk_upsert``, ``bulk_update`` and ``bulk_delete`` take an
``Engine``, ``Connection`` or ``Session`` and rows as dicts, tuples or a pandas
DataFrame; they run atomically (or a commit per batch with ``commit_every=``),
tell the query cache which table they wrote, and return a :class:`BulkResult`.
See ``docs/bulk.md``.
"""

from sqlperf.bulk.batches import BulkResult
from sqlperf.bulk.delete import DeleteMethod, bulk_delete
from sqlperf.bulk.insert import InsertMethod, bulk_insert
from sqlperf.bulk.update import UpdateMethod, bulk_update
from sqlperf.bulk.upsert import UpsertMethod, bulk_upsert

__all__ = [
    "BulkResult",
    "DeleteMethod",
    "InsertMethod",
    "UpdateMethod",
    "UpsertMethod",
    "bulk_delete",
    "bulk_insert",
    "bulk_update",
    "bulk_upsert",
]
