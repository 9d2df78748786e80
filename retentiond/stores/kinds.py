"""One row per store kind: the `type:` that names it in a config, the config class that checks
it, the Store class that implements it, and how the DPO report says it deletes.

A new store kind is one folder under stores/ and one row here; tests/test_kinds.py fails while
the config's store types and these rows differ. The implementations are named by module path
and imported only when a store of the kind is built: the daemon imports this between runs and
must not import SQLAlchemy then (service/runner.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from retentiond.config.model import (
    Config,
    CsvStoreConfig,
    FilesStoreConfig,
    SqlStoreConfig,
    StoreBase,
    ThreeCxCallsStoreConfig,
    VoicemailStoreConfig,
)
from retentiond.i18n import N_
from retentiond.stores.base import Store

# How a kind's Store class is called: (the class, the store's config, the whole config).
Construct = Callable[[Callable[..., Store], Any, Config], Store]


@dataclass(frozen=True)
class Kind:
    config: type[StoreBase]  # the class the config's `stores:` entries of this type become
    implementation: str  # "module:Class" of its Store, imported when a store is built
    construct: Construct
    title: str  # the report's name for the kind (English, marked N_: the report translates it)
    deletes: str  # how it deletes, for the DPO (README, "How it deletes"), marked N_ likewise

    def store_class(self) -> type[Store]:
        """The Store class, imported now."""
        module, _, name = self.implementation.partition(":")
        implementation = getattr(importlib.import_module(module), name)
        if not (isinstance(implementation, type) and issubclass(implementation, Store)):
            raise TypeError(f"{self.implementation} is not a Store")  # a bug in the table
        return implementation

    def build(self, store: Any, config: Config) -> Store:
        """The store object for one `stores:` entry of this kind. Nothing is opened yet."""
        return self.construct(self.store_class(), store, config)


def _with_connection(
    implementation: Callable[..., Store],
    store: SqlStoreConfig | ThreeCxCallsStoreConfig,
    config: Config,
) -> Store:
    zone = config.zone()
    return implementation(store, config.connections[store.connection], zone)


def _files(implementation: Callable[..., Store], store: FilesStoreConfig, config: Config) -> Store:
    zone = config.zone()
    references = store.references
    connection = config.connections[references.connection] if references else None
    named_by = store.named_by
    return implementation(
        store,
        zone,
        connection,
        named_by_connection=config.connections.get(named_by.connection) if named_by else None,
    )


def _in_zone(
    implementation: Callable[..., Store],
    store: VoicemailStoreConfig | CsvStoreConfig,
    config: Config,
) -> Store:
    zone = config.zone()
    return implementation(store, zone)


# In the order the report lists them. How each kind deletes is the Umsetzungsvorgabe per store.
KINDS: dict[str, Kind] = {
    "sql": Kind(
        SqlStoreConfig,
        "retentiond.stores.sql.store:SqlStore",
        _with_connection,
        N_("SQL table"),
        N_(
            "Batched SQL DELETE along an index (the time column's index, or the primary key where "
            "the time column has none), each batch one short transaction with lock and statement "
            "timeouts; the cutoff is bound explicitly in every statement. Logical deletion: the "
            "database frees the rows' space for reuse; copies in binary logs, WAL archives and "
            "backups are listed under residual copies."
        ),
    ),
    "files": Kind(
        FilesStoreConfig,
        "retentiond.stores.files.store:FilesStore",
        _files,
        N_("Folder of files"),
        N_(
            "unlink() relative to an open folder descriptor, never following a symlink, never "
            "leaving the root or its filesystem; each file is re-checked (same inode, regular "
            "file, still expired) just before it is unlinked. Logical deletion: the blocks are "
            "freed, not overwritten (full-disk encryption and TRIM protect the freed blocks)."
        ),
    ),
    "asterisk_voicemail": Kind(
        VoicemailStoreConfig,
        "retentiond.stores.voicemail.store:VoicemailStore",
        _in_zone,
        N_("Asterisk voicemail spool"),
        N_(
            "Each message is deleted as a group (audio in every format and its .txt metadata), "
            "aged by origtime, under Asterisk's folder lock held for at most half a second; "
            "greetings are never touched."
        ),
    ),
    "csv": Kind(
        CsvStoreConfig,
        "retentiond.stores.csv.store:CsvStore",
        _in_zone,
        N_("CSV call records"),
        N_(
            "Atomic rewrite: the file is written anew without the expired lines into a temporary "
            "file beside it and renamed into place, keeping every line Asterisk appends meanwhile."
        ),
    ),
    "3cx_call_history": Kind(
        ThreeCxCallsStoreConfig,
        "retentiond.stores.threecx.store:ThreeCxCallsStore",
        _with_connection,
        N_("3CX call history"),
        N_(
            "A batch of calls and their dependent rows (segments, quality, participants, party "
            "information no remaining call uses) deleted in one transaction."
        ),
    ),
}
