"""Store kinds behind one interface (`retentiond.stores.base.Store`)."""

from __future__ import annotations

from retentiond.config.model import (
    Config,
    CsvStoreConfig,
    FilesStoreConfig,
    SqlStoreConfig,
    StoreConfig,
    ThreeCxCallsStoreConfig,
    VoicemailStoreConfig,
)
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


def build_store(store: StoreConfig, config: Config) -> Store:
    """The store object for one `stores:` entry of a rule. Nothing is opened yet."""
    zone = config.zone()
    if isinstance(store, SqlStoreConfig):
        from retentiond.stores.sql.store import SqlStore

        return SqlStore(store, config.connections[store.connection], zone)
    if isinstance(store, FilesStoreConfig):
        from retentiond.stores.files.store import FilesStore

        references = store.references
        connection = config.connections[references.connection] if references else None
        named_by = store.named_by
        return FilesStore(
            store,
            zone,
            connection,
            named_by_connection=config.connections.get(named_by.connection) if named_by else None,
        )
    if isinstance(store, VoicemailStoreConfig):
        from retentiond.stores.voicemail.store import VoicemailStore

        return VoicemailStore(store, zone)
    if isinstance(store, CsvStoreConfig):
        from retentiond.stores.csv.store import CsvStore

        return CsvStore(store, zone)
    if isinstance(store, ThreeCxCallsStoreConfig):
        from retentiond.stores.threecx.store import ThreeCxCallsStore

        return ThreeCxCallsStore(store, config.connections[store.connection], zone)
    raise TypeError(
        f"unknown store config {type(store).__name__}"
    )  # a bug: the schema has no other


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
