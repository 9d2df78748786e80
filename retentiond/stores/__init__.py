"""Store kinds behind one interface (`retentiond.stores.base.Store`)."""

from __future__ import annotations

from retentiond.config.model import Config, FilesStoreConfig, SqlStoreConfig, StoreConfig
from retentiond.stores.base import Batch, BatchResult, Store, Survey


def build_store(store: StoreConfig, config: Config) -> Store:
    """The store object for one `stores:` entry of a rule. Nothing is opened yet."""
    if isinstance(store, SqlStoreConfig):
        from retentiond.stores.sql import SqlStore

        return SqlStore(store, config.connections[store.connection], config.zone())
    if isinstance(store, FilesStoreConfig):
        from retentiond.stores.files import FilesStore

        return FilesStore(store, config.zone())
    raise TypeError(
        f"unknown store config {type(store).__name__}"
    )  # a bug: the schema allows no other


__all__ = ["Batch", "BatchResult", "Store", "Survey", "build_store"]
