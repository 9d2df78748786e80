"""The 3cx preset: 3CX's call history, recordings, voicemail and chats in its PostgreSQL database
and data folder, found from 3CX's own settings file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from retentiond.config.pbxfiles import find_3cx_settings, read_3cx_settings
from retentiond.config.presets.templates import TRANSFORMS, RuleTemplate, sql_store
from retentiond.config.presets.transforms import THREECX_ANONYMIZE

# The role of its own that docs/install.md creates for retentiond (SELECT, DELETE on call data),
# whose password is the systemd credential named like the connection.
THREECX_ROLE = "retentiond"
THREECX_CREDENTIALS = Path("/etc/retentiond/credentials")


def expand(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
    data_dir = Path(str(settings.get("data_dir", "/var/lib/3cxpbx/Instance1/Data")))
    given = settings.get("ini") or settings.get("config_json")
    source = Path(str(given)) if given else find_3cx_settings()
    db = read_3cx_settings(source)
    user = _threecx_user(settings, db.master_user)
    url = f"postgresql+psycopg://{quote(user, safe='')}@{db.host}:{db.port}/{db.name}"
    connection: dict[str, Any] = {"url": url}
    if settings.get("password_file"):
        connection["password_file"] = str(settings["password_file"])
    elif user == db.master_user:
        connection["password_from"] = str(source)  # read from 3CX's file at each connect
    connections = {"3cx": connection}
    recordings = data_dir / "Recordings"
    voicemail = data_dir / "Ivr" / "Voicemail" / "Data"
    # Recordings first, in a run and in the day: a `recordings` row names a participant of a
    # call (cl_participants_id), and where a foreign key says so, the call cannot go before it.
    rules = [
        RuleTemplate(
            "call-recordings",
            "Call recordings (voice, transcriptions; numbers in the file names)",
            "Quality assurance or documentation, as the recording consent says",
            "daily 03:00",
            [
                {
                    **sql_store("3cx", "recordings", "start_time", optional=True),
                    "file_column": "recording_url",
                    "file_root": str(recordings),
                    "subject_in_file_name": True,  # <ext>/[Name]_<ext>-<number>_<time>(<n>).wav
                },
                {
                    "type": "files",
                    "root": str(recordings),
                    "match": ["**/*.wav", "**/*.mp3", "**/*.opus"],
                    "age_from": "filename_date",
                    "subject_in_name": True,  # [Name]_<ext>-<number>_<time>(<n>).wav
                    "named_by": {
                        "connection": "3cx",
                        "table": "recordings",
                        "column": "recording_url",
                    },
                    "optional": True,
                },
            ],
        ),
        RuleTemplate(
            "call-records",
            "Call history (numbers, names, times, durations)",
            "Troubleshooting, cost control and call statistics",
            "daily 03:15",
            [
                {
                    "type": "3cx_call_history",
                    "connection": "3cx",
                    TRANSFORMS: dict(THREECX_ANONYMIZE),
                }
            ],
        ),
        RuleTemplate(
            "voicemail",
            "Voicemail messages (voice, caller numbers and names)",
            "Delivering messages to the called person",
            "daily 03:30",
            [
                {
                    **sql_store("3cx", "s_voicemail", "created_time", optional=True),
                    "file_column": "wav_file",
                    "file_root": str(voicemail),
                    "subject_columns": ["caller", "callee"],
                },
                {
                    "type": "files",
                    "root": str(voicemail),
                    "match": ["**/vmail_*.wav"],  # greetings and prompts live there too
                    "age_from": "mtime",
                    "named_by": {"connection": "3cx", "table": "s_voicemail", "column": "wav_file"},
                    "optional": True,
                },
            ],
        ),
        RuleTemplate(
            "chats",
            "Chat messages",
            "Communication with customers and colleagues",
            "daily 04:00",
            [sql_store("3cx", "chat_message", "time_sent", optional=True)],
            required=False,
        ),
    ]
    return connections, rules, None


def _threecx_user(settings: dict[str, Any], master_user: str) -> str:
    """The database role: the one set, else retentiond's own where its credential exists (the
    service's, or where docs/install.md stores it), else 3CX's master account."""
    if settings.get("db_user"):
        return str(settings["db_user"])
    service_credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    folders = [Path(service_credentials)] if service_credentials else []
    if any((folder / "3cx").is_file() for folder in [*folders, THREECX_CREDENTIALS]):
        return THREECX_ROLE
    return master_user
