"""The retentiond config tests/test_nspawn_systemd.py writes into its machine: three rules over
MariaDB (socket and TCP), PostgreSQL, SQLite, a voicemail spool and a recordings tree."""

CONFIG_TEXT = """\
version: 1
timezone: UTC
audit:
  path: {audit}
connections:
  cdrdb:                  # MariaDB over its socket, bound into the machine
    url: mariadb+pymysql://{user}@localhost/{mariadb}?unix_socket=/run/mysqld/mysqld.sock&charset=utf8mb4
  cdrtcp:                 # the same server over TCP
    url: mariadb+pymysql://{user}@127.0.0.1:{mariadb_port}/{mariadb}?charset=utf8mb4
  pgcdr:
    url: postgresql+psycopg://{user}@127.0.0.1:{postgres_port}/{postgres}
  master:
    url: sqlite:////var/log/asterisk/master.db
rules:
  - name: call-records
    description: {description}
    purpose: Troubleshooting and cost control
    legal_basis: Art. 6(1)(f) GDPR
    keep: {keep}
    schedule: daily 03:15
    stores:
      - type: sql
        connection: cdrdb
        table: cdr
        time_column: calldate
        batch_size: {batch_size}
        pause: {pause}
        subject_columns: [src, dst, cnum, did, clid]
      - type: sql
        connection: cdrtcp
        table: cel
        time_column: eventtime
        subject_columns: [cid_num, cid_ani]
      - type: sql
        connection: pgcdr
        table: cdr
        time_column: calldate
        subject_columns: [src, dst]
      - type: sql
        connection: master
        table: cdr
        time_column: calldate
        subject_columns: [src, dst]
  - name: voicemail
    description: Voicemail messages
    purpose: Delivering messages to the called person
    legal_basis: Art. 6(1)(f) GDPR
    keep: {keep}
    schedule: daily 03:30
    stores:
      - type: asterisk_voicemail
        root: /var/spool/asterisk/voicemail
  - name: call-recordings
    description: Call recordings
    purpose: Quality assurance
    legal_basis: Art. 6(1)(a) GDPR
    keep: {keep}
    schedule: daily 03:45
    stores:
      - type: files
        root: /var/spool/asterisk/monitor
        match: ["**/*.wav"]
        age_from: mtime
safety:
  max_delete_fraction: 0.95
  # realistic_spool has one message whose .txt lacks its origtime: undated, never deleted
  max_undated_fraction: 0.2
"""
