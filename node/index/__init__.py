"""The index (catalog): patients, studies, series, instances and conflicts, in SQL."""

from node.index.catalog import Catalog
from node.index.records import ConflictRecord, InstanceRecord

__all__ = ["Catalog", "ConflictRecord", "InstanceRecord"]
