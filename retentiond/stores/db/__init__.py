"""The database layer every SQL-backed store kind shares (sql, threecx, a files store's
references, the report's residual check).

- connection.py: `Database`, a connection as retentiond uses it (password, session timeouts,
  retrying work, the first connect, the clock skew guard);
- retries.py: which failures are retried, the backoff, the words for giving up; deadline.py:
  PostgreSQL's read deadline;
- timecols.py: time columns (forms, bounds, hold edges, stored values read back);
- indexes.py: which index leads with a column; rows.py: reading rows;
- errors.py: the database's errors as codes and fixed words; grants.py and privileges.py: what
  the connected user may do;
- dialects/: the only place that knows MariaDB/MySQL, PostgreSQL and SQLite apart.
"""
