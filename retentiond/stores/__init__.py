"""Store kinds behind one interface (`retentiond.stores.base.Store`); each kind is a row of
`retentiond.stores.kinds`."""

from __future__ import annotations

from retentiond.config.model import Config, StoreConfig
from retentiond.stores.base import (
    AbsentStore,
    Batch,
    BatchFailed,
    BatchResult,
    FailedStore,
    Found,
    Store,
    Survey,
)
from retentiond.stores.kinds import KINDS


def build_store(store: StoreConfig, config: Config) -> Store:
    """The store object for one `stores:` entry of a rule. Nothing is opened yet."""
    kind = KINDS.get(store.type)
    if kind is None:  # a bug: the schema has no other
        raise TypeError(f"unknown store config {type(store).__name__}")
    return kind.build(store, config)


__all__ = [
    "AbsentStore",
    "Batch",
    "BatchFailed",
    "BatchResult",
    "FailedStore",
    "Found",
    "Store",
    "Survey",
    "build_store",
]
