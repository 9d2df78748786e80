"""What `check` shows of an SQL store: the server, the time column, the strategy and why, the
batch size, the query plan of each batch (with a warning when it reads the whole table), the
file column, the subject columns and the anonymization.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from retentiond.config.roots import system_root_warning
from retentiond.stores.db.timecols import stored_instant
from retentiond.stores.db.timekinds import KIND_WORDS
from retentiond.stores.sql.anonymize import Anonymizing


class Describing(Anonymizing):
    """`describe` and the query plan it shows."""

    def describe(self) -> list[str]:
        layout = self._require_layout()
        lines = [
            f"{self.label}: {self._db.server}",
            f"time column {self._time_name} ({KIND_WORDS[self._time_kind]})",
            f"strategy {layout.strategy}: {layout.reason}",
            self._describe_batches(),
        ]
        plan, full_scan = self._db.retrying("explaining the batch statement", self._explain)
        lines.append("query plan of each batch:")
        lines.extend(f"  {line}" for line in plan)
        if layout.strategy == "scan":
            lines.append(
                f"warning: no index on {self._time_name}: every batch reads the whole table; "
                f"{self._index_hint()} would fix it"
            )
        elif full_scan:
            lines.append(
                "warning: the query plan reads the whole table for every batch; check that "
                f"{self._time_name} is indexed ({self._index_hint()})"
            )
        lines.extend(self._describe_files())
        searched = list(self._subject_names)
        if self._file_parts is not None:
            searched.append(f"the parts of the file names in {self._file_name}")
        if searched:
            lines.append(f"subjects: {', '.join(searched)} (holds by number, find and erase)")
        lines.extend(
            f"anonymize: {name} {transform.describe()}"
            for name, transform in self._transforms.items()
        )
        return lines

    def _describe_batches(self) -> str:
        locks = " (a DELETE locks the whole table)" if self._storage.locks_table else ""
        if self.batch_time is None:
            return f"batches of {self._batch_size} rows (batch_size)"
        return (
            f"batches sized to take about {self.batch_time:g} s each{locks}, starting at "
            f"{self._batch_size} rows (set batch_size for a fixed size)"
        )

    def _describe_files(self) -> list[str]:
        if self._files is None:
            return []
        name = self._file_name
        lines = [
            f"files: column {name} names a file relative to {self._files.path}; once a batch "
            "is committed, the files of its rows are deleted unless a remaining row names them "
            "too; never through a symlink, an absolute path or `..`, never outside that folder",
        ]
        system = system_root_warning(self._store.file_root, self._store.allow_system_root)
        if system is not None:
            lines.append(system)
        if self._file_index is None:
            lines.append(
                f"warning: no index on {name}: each batch's check for remaining rows naming the "
                f"same files reads the whole table; {self._index_hint(name)} would fix it"
            )
        return lines

    def _explain(self, connection: Connection) -> tuple[list[str], bool]:
        """The plan as lines, and whether it reads the whole table."""
        statement, params = self._statement_to_explain(connection)
        return self._dialect.explain(connection, statement, params)

    def _statement_to_explain(self, connection: Connection) -> tuple[str, dict[str, Any]]:
        """The statement each batch runs against the table (not only its keys)."""
        layout = self._require_layout()
        where = self._expired(self._typical_cutoff(connection))
        params: dict[str, Any] = {**where.params, "n": self._batch_size}
        if layout.strategy == "key_walk":
            params.update(last=0, hi=self._batch_size)
            return self._walk_delete_sql(where, returning=False), params
        if layout.strategy == "time_index":
            params["upto"] = where.params["bound"]
            upto = f"{where.sql} AND {self._time_sql} <= :upto"
            return f"DELETE FROM {self._table_sql} WHERE {upto}", params
        if layout.key is None:
            return self._keyless_delete_sql(where, ordered=True, returning=False), params
        return self._plan_read_sql(where, ordered=True), params

    def _typical_cutoff(self, connection: Connection) -> datetime:
        """A day past the oldest row: a daily run's share of the table, not all of it.

        Optimizers read a small table whole when every row matches, which says nothing about
        the plan once the table is large and a run takes its oldest day.
        """
        instant = stored_instant(self._read_oldest(connection), self._time_kind, self._zone)
        return instant + timedelta(days=1) if instant is not None else datetime.now(UTC)
