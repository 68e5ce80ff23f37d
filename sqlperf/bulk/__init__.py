"""Bulk operations: rows in by the driver's fastest path, atomically or a batch at a time.

``bulk_insert`` is here; ``bulk_upsert``, ``bulk_update`` and ``bulk_delete`` come next.
"""

from sqlperf.bulk.batches import BulkResult
from sqlperf.bulk.insert import InsertMethod, bulk_insert

__all__ = ["BulkResult", "InsertMethod", "bulk_insert"]
