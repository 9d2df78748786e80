"""3CX v18/v20 call history tables on PostgreSQL, and fake calls of a small German office.

The DDL follows what public code and dumps show of 3CX's `database_single` (research
pbx_domain.md §4): the cl_* tables of v18 and v20 before Update 6 (TypeORM entities generated from
a live database), `cdroutput` and `cdrbilling` of v20 Update 6+, and the `recordings` and
`s_voicemail` tables whose rows name files. 3CX documents none of it; dumps show no foreign keys
between the cl_* tables, so the schema comes with and without them. Where a detail is a guess it
says so.

Every value is fake, generated from a seed: +49 numbers, German names, extensions 10xx.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pbxdata import PbxDatabase, phone_number

CL_TABLES = [
    """
    CREATE TABLE cl_calls (
      id serial PRIMARY KEY,
      start_time timestamp with time zone NOT NULL,
      end_time timestamp with time zone NOT NULL,
      is_answered boolean NOT NULL,
      ringing_dur interval NOT NULL,
      talking_dur interval NOT NULL,
      q_wait_dur interval NOT NULL,
      call_history_id uuid,
      duplicated boolean DEFAULT false,
      migrated boolean DEFAULT false
    )
    """,
    "CREATE INDEX cl_calls_start_time_idx ON cl_calls (start_time)",
    "CREATE INDEX cl_calls_end_time_idx ON cl_calls (end_time)",
    "CREATE INDEX cl_calls_is_answered_idx ON cl_calls (is_answered)",
    """
    CREATE TABLE cl_party_info (
      id serial PRIMARY KEY,
      dn_type integer,
      dn character varying(255),
      caller_number character varying(255),
      display_name character varying(255),
      dn_class integer NOT NULL DEFAULT 0,
      firstlastname character varying(255),
      did_number character varying(255) DEFAULT NULL::character varying
    )
    """,
    """
    CREATE TABLE cl_participants (
      id serial PRIMARY KEY,
      call_id integer NOT NULL,
      info_id integer NOT NULL,
      role integer DEFAULT 1,
      is_inbound boolean DEFAULT false,
      end_status integer NOT NULL DEFAULT 0,
      forward_reason integer,
      failure_reason integer,
      start_time timestamp with time zone,
      answer_time timestamp with time zone,
      end_time timestamp with time zone,
      billing_code character varying(20),
      billing_ratename character varying(255),
      billing_rate numeric,
      billing_cost numeric,
      billing_duration interval,
      recording_url character varying(511),
      billing_group character varying(255)
    )
    """,
    "CREATE INDEX cl_participants_call_id_idx ON cl_participants (call_id)",
    "CREATE INDEX cl_participants_info_id_idx ON cl_participants (info_id)",
    """
    CREATE TABLE cl_segments (
      id serial PRIMARY KEY,
      call_id integer NOT NULL,
      seq_order integer NOT NULL,
      seq_group integer NOT NULL,
      src_part_id integer NOT NULL,
      dst_part_id integer NOT NULL,
      start_time timestamp with time zone NOT NULL,
      end_time timestamp with time zone NOT NULL,
      type integer NOT NULL,
      action_id integer NOT NULL,
      action_party_id integer,
      call_history_id uuid
    )
    """,
    "CREATE INDEX cl_segments_call_id_idx ON cl_segments (call_id)",
    "CREATE INDEX cl_segments_start_time_idx ON cl_segments (start_time)",
    "CREATE INDEX cl_segments_src_part_id_idx ON cl_segments (src_part_id)",
    "CREATE INDEX cl_segments_dst_part_id_idx ON cl_segments (dst_part_id)",
]

CL_QUALITY = [
    """
    CREATE TABLE cl_quality (
      call_history_id uuid,
      call_id integer NOT NULL,
      time_stamp timestamp with time zone,
      summary integer,
      a_caller character varying(255),
      b_caller character varying(255),
      a_number character varying(255),
      b_number character varying(255),
      a_name character varying(255),
      b_name character varying(255),
      a_codec character varying(64),
      b_codec character varying(64),
      a_mos_from_pbx numeric,
      a_mos_to_pbx numeric,
      a_rtt integer,
      a_rx_loss numeric,
      b_mos_from_pbx numeric,
      b_mos_to_pbx numeric,
      b_rtt integer,
      b_rx_loss numeric
    )
    """,
    "CREATE INDEX cl_quality_call_id_idx ON cl_quality (call_id)",
]

# Not in 3CX's own databases [U]; the store must find its links through them all the same.
CL_FOREIGN_KEYS = [
    "ALTER TABLE cl_participants ADD CONSTRAINT cl_participants_call_fk "
    "FOREIGN KEY (call_id) REFERENCES cl_calls (id)",
    "ALTER TABLE cl_participants ADD CONSTRAINT cl_participants_info_fk "
    "FOREIGN KEY (info_id) REFERENCES cl_party_info (id)",
    "ALTER TABLE cl_segments ADD CONSTRAINT cl_segments_call_fk "
    "FOREIGN KEY (call_id) REFERENCES cl_calls (id)",
    "ALTER TABLE cl_segments ADD CONSTRAINT cl_segments_src_fk "
    "FOREIGN KEY (src_part_id) REFERENCES cl_participants (id)",
    "ALTER TABLE cl_segments ADD CONSTRAINT cl_segments_dst_fk "
    "FOREIGN KEY (dst_part_id) REFERENCES cl_participants (id)",
    "ALTER TABLE cl_segments ADD CONSTRAINT cl_segments_action_fk "
    "FOREIGN KEY (action_party_id) REFERENCES cl_participants (id)",
    "ALTER TABLE cl_quality ADD CONSTRAINT cl_quality_call_fk "
    "FOREIGN KEY (call_id) REFERENCES cl_calls (id)",
]

CDROUTPUT = [
    """
    CREATE TABLE cdroutput (
      cdr_id uuid PRIMARY KEY,
      call_history_id uuid NOT NULL,
      source_participant_id integer,
      source_entity_type character varying(64),
      source_dn_number character varying(255),
      source_dn_type character varying(64),
      source_dn_name character varying(255),
      source_participant_name character varying(255),
      source_participant_phone_number character varying(255),
      source_participant_trunk_did character varying(255),
      source_participant_is_incoming boolean,
      destination_participant_id integer,
      destination_entity_type character varying(64),
      destination_dn_number character varying(255),
      destination_dn_type character varying(64),
      destination_dn_name character varying(255),
      destination_participant_name character varying(255),
      destination_participant_phone_number character varying(255),
      destination_participant_is_incoming boolean,
      creation_method character varying(64),
      creation_forward_reason character varying(64),
      termination_reason character varying(64),
      termination_reason_details character varying(255),
      cdr_started_at timestamp with time zone NOT NULL,
      cdr_ended_at timestamp with time zone,
      cdr_answered_at timestamp with time zone,
      base_cdr_id uuid,
      originating_cdr_id uuid,
      continued_in_cdr_id uuid
    )
    """,
    "CREATE INDEX cdroutput_cdr_started_at_idx ON cdroutput (cdr_started_at)",
    "CREATE INDEX cdroutput_call_history_id_idx ON cdroutput (call_history_id)",
]

# Its key is a guess [U]: one billing row per CDR, found by cdr_id.
CDRBILLING = [
    """
    CREATE TABLE cdrbilling (
      cdr_id uuid PRIMARY KEY,
      billing_code character varying(20),
      billing_rate_name character varying(255),
      billing_rate numeric,
      billing_cost numeric,
      billing_duration interval,
      billing_group character varying(255)
    )
    """,
]

RECORDINGS = [
    """
    CREATE TABLE recordings (
      id_recording serial PRIMARY KEY,
      cl_participants_id integer,
      recording_url character varying(511),
      start_time timestamp with time zone NOT NULL,
      end_time timestamp with time zone,
      transcription text,
      archived boolean DEFAULT false,
      archived_url character varying(511),
      call_type integer,
      sentiment_score integer,
      summary text,
      cdr_id uuid,
      transcribed boolean DEFAULT false,
      emailed boolean DEFAULT false,
      queue_dn character varying(255),
      offload_id integer,
      forced boolean DEFAULT false
    )
    """,
    "CREATE INDEX recordings_start_time_idx ON recordings (start_time)",
]

# `recordings.cl_participants_id` names the recorded participant (v20 dumps, research
# pbx_domain.md §4.2, "Link to cl_participants"). No dump shows a foreign key on it [U]; where a
# database has one, a participant cannot be deleted while a recordings row names it.
RECORDINGS_FOREIGN_KEY = (
    "ALTER TABLE recordings ADD CONSTRAINT recordings_cl_participants_fk "
    "FOREIGN KEY (cl_participants_id) REFERENCES cl_participants (id)"
)

# The key column's name is a guess [U]; the rest follows a v20 dump.
S_VOICEMAIL = [
    """
    CREATE TABLE s_voicemail (
      idvoicemail serial PRIMARY KEY,
      wav_file character varying(511),
      callee character varying(255),
      caller character varying(255),
      caller_name character varying(255),
      duration integer,
      created_time timestamp with time zone NOT NULL,
      heard boolean DEFAULT false,
      heard_time timestamp with time zone,
      removed boolean DEFAULT false,
      removed_time timestamp with time zone,
      transcription text,
      cdr_participant_id uuid
    )
    """,
    "CREATE INDEX s_voicemail_created_time_idx ON s_voicemail (created_time)",
]

CL_DEPENDENTS = ("cl_segments", "cl_quality", "cl_participants")

EXTENSIONS = {
    "1001": "Erika Mustermann",
    "1002": "Max Mustermann",
    "1003": "Jürgen Weiß",
    "1004": "Özlem Yılmaz",
    "1005": "Sophie Becker",
    "1006": "Lukas Hoffmann",
}
CALLERS = ["Anna Schulz", "Jonas Krüger", "Lea Zimmermann", "Felix Braun", "Marie Koch"]
TRUNK_DID = "+4930123456"


def create_cl_schema(
    database: PbxDatabase, *, foreign_keys: bool = False, quality: bool = True
) -> None:
    database.execute(*CL_TABLES, *(CL_QUALITY if quality else []))
    if foreign_keys:
        statements = [fk for fk in CL_FOREIGN_KEYS if quality or "cl_quality" not in fk]
        database.execute(*statements)


def create_cdroutput_schema(database: PbxDatabase, *, billing: bool = True) -> None:
    database.execute(*CDROUTPUT, *(CDRBILLING if billing else []))


def recording_name(extension: str, name: str, number: str, moment: datetime, sequence: int) -> str:
    """3CX's recording file name: `[Name]_<ext>-<number>_<YYYYMMDDhhmmss>(<id>).wav`."""
    return f"[{name}]_{extension}-{number}_{moment:%Y%m%d%H%M%S}({sequence}).wav"


@dataclass
class ClHistory:
    """Rows for the cl_* tables, keyed by table name, with the ids chosen here."""

    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {
            "cl_calls": [],
            "cl_party_info": [],
            "cl_participants": [],
            "cl_segments": [],
            "cl_quality": [],
        }
    )

    def insert(self, database: PbxDatabase, *, quality: bool = True) -> None:
        for table, rows in self.rows.items():
            if table != "cl_quality" or quality:
                database.insert(table, rows)

    def call_ids(self, starts_before: datetime | None = None) -> set[int]:
        return {
            call["id"]
            for call in self.rows["cl_calls"]
            if starts_before is None or call["start_time"] < starts_before
        }

    def party_ids_of(self, call_ids: set[int]) -> set[int]:
        """The party rows the participants of these calls point to."""
        return {p["info_id"] for p in self.rows["cl_participants"] if p["call_id"] in call_ids}


def cl_history(starts: Sequence[datetime], seed: int = 0) -> ClHistory:
    """One 3CX call per start time (aware): inbound and outbound, with a ring group now and then.

    Extensions and ring groups have one cl_party_info row each, shared by every call they take
    part in; each outside caller gets a row of their own.
    """
    rng = random.Random(seed)
    history = ClHistory()
    rows = history.rows
    shared_party: dict[str, int] = {}

    def party(key: str | None, **values: Any) -> int:
        if key is not None and key in shared_party:
            return shared_party[key]
        party_id = len(rows["cl_party_info"]) + 1
        rows["cl_party_info"].append({"id": party_id, "dn_class": 0, **values})
        if key is not None:
            shared_party[key] = party_id
        return party_id

    def extension_party(extension: str) -> int:
        name = EXTENSIONS[extension]
        return party(
            f"ext{extension}",
            dn_type=0,
            dn=extension,
            caller_number=extension,
            display_name=name,
            firstlastname=name,
            did_number=None,
        )

    for call_id, start in enumerate(starts, start=1):
        inbound = rng.random() < 0.6
        answered = rng.random() < 0.8
        extension = rng.choice(sorted(EXTENSIONS))
        number = phone_number(rng)
        caller_name = rng.choice(CALLERS)
        ringing = timedelta(seconds=rng.randrange(3, 25))
        talking = timedelta(seconds=rng.randrange(20, 900)) if answered else timedelta(0)
        end = start + ringing + talking
        outside = party(
            None,
            dn_type=1,
            dn="10000",
            caller_number=number,
            display_name=caller_name if inbound else "",
            firstlastname=caller_name if inbound else "",
            did_number=TRUNK_DID if inbound else None,
        )
        inside = extension_party(extension)
        legs = [(outside, inbound), (inside, not inbound)]
        if inbound and rng.random() < 0.3:
            group = party(
                "ring800",
                dn_type=2,
                dn="800",
                caller_number="800",
                display_name="Vertrieb",
                firstlastname="",
                did_number=None,
            )
            legs.insert(1, (group, False))
        recording = (
            f"{extension}/"
            + recording_name(extension, EXTENSIONS[extension], number, start, call_id)
            if answered
            else None
        )
        rows["cl_calls"].append(
            {
                "id": call_id,
                "start_time": start,
                "end_time": end,
                "is_answered": answered,
                "ringing_dur": ringing,
                "talking_dur": talking,
                "q_wait_dur": timedelta(0),
                "call_history_id": uuid.UUID(int=rng.getrandbits(128), version=4),
            }
        )
        participant_ids = []
        for role, (info_id, is_inbound) in enumerate(legs, start=1):
            participant_id = len(rows["cl_participants"]) + 1
            participant_ids.append(participant_id)
            is_inside = info_id == inside
            rows["cl_participants"].append(
                {
                    "id": participant_id,
                    "call_id": call_id,
                    "info_id": info_id,
                    "role": role,
                    "is_inbound": is_inbound,
                    "end_status": 1 if answered else 0,
                    "forward_reason": None,
                    "failure_reason": None if answered else 3,
                    "start_time": start,
                    "answer_time": start + ringing if answered else None,
                    "end_time": end,
                    "billing_code": None if inbound else "DE-FEST",
                    "billing_ratename": None if inbound else "Festnetz Deutschland",
                    "billing_rate": None,
                    "billing_cost": None,
                    "billing_duration": talking if not inbound else None,
                    "recording_url": recording if is_inside else None,
                    "billing_group": None,
                }
            )
        first, last = participant_ids[0], participant_ids[-1]
        segments = [(1, start, start + ringing, 1)]
        if answered:
            segments.append((2, start + ringing, end, 2))
        for seq_order, seg_start, seg_end, kind in segments:
            rows["cl_segments"].append(
                {
                    "id": len(rows["cl_segments"]) + 1,
                    "call_id": call_id,
                    "seq_order": seq_order,
                    "seq_group": 1,
                    "src_part_id": first,
                    "dst_part_id": last,
                    "start_time": seg_start,
                    "end_time": seg_end,
                    "type": kind,
                    "action_id": 1 if kind == 1 else 6,
                    "action_party_id": last,
                    "call_history_id": rows["cl_calls"][-1]["call_history_id"],
                }
            )
        if answered:
            rows["cl_quality"].append(
                {
                    "call_history_id": rows["cl_calls"][-1]["call_history_id"],
                    "call_id": call_id,
                    "time_stamp": end,
                    "summary": rng.randrange(1, 5),
                    "a_caller": number,
                    "b_caller": extension,
                    "a_number": number,
                    "b_number": extension,
                    "a_name": caller_name,
                    "b_name": EXTENSIONS[extension],
                    "a_codec": "G711 A-law",
                    "b_codec": "OPUS",
                    "a_mos_from_pbx": 4.3,
                    "a_mos_to_pbx": 4.2,
                    "a_rtt": rng.randrange(10, 80),
                    "a_rx_loss": 0.1,
                    "b_mos_from_pbx": 4.4,
                    "b_mos_to_pbx": 4.4,
                    "b_rtt": rng.randrange(1, 10),
                    "b_rx_loss": 0.0,
                }
            )
    return history


def cdroutput_rows(starts: Iterable[datetime], seed: int = 0) -> list[dict[str, Any]]:
    """One cdroutput row per start time; two rows in a row share a call (call_history_id)."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    call_history_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    for index, start in enumerate(starts):
        if index % 2 == 0:
            call_history_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        extension = rng.choice(sorted(EXTENSIONS))
        number = phone_number(rng)
        answered = rng.random() < 0.8
        ringing = timedelta(seconds=rng.randrange(3, 25))
        end = start + ringing + timedelta(seconds=rng.randrange(20, 600) if answered else 0)
        rows.append(
            {
                "cdr_id": uuid.UUID(int=rng.getrandbits(128), version=4),
                "call_history_id": call_history_id,
                "source_participant_id": rng.randrange(1, 10_000),
                "source_entity_type": "external_line",
                "source_dn_number": "10000",
                "source_dn_type": "provider",
                "source_dn_name": "Telekom SIP-Trunk",
                "source_participant_name": rng.choice(CALLERS),
                "source_participant_phone_number": number,
                "source_participant_trunk_did": TRUNK_DID,
                "source_participant_is_incoming": True,
                "destination_participant_id": rng.randrange(1, 10_000),
                "destination_entity_type": "extension",
                "destination_dn_number": extension,
                "destination_dn_type": "extension",
                "destination_dn_name": EXTENSIONS[extension],
                "destination_participant_name": EXTENSIONS[extension],
                "destination_participant_phone_number": extension,
                "destination_participant_is_incoming": False,
                "creation_method": "call_init",
                "creation_forward_reason": None,
                "termination_reason": "dst_participant_terminated" if answered else "cancelled",
                "termination_reason_details": None,
                "cdr_started_at": start,
                "cdr_ended_at": end,
                "cdr_answered_at": start + ringing if answered else None,
                "base_cdr_id": None,
                "originating_cdr_id": None,
                "continued_in_cdr_id": None,
            }
        )
    return rows


def cdrbilling_rows(cdrs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Billing for the answered outside calls among these CDRs."""
    return [
        {
            "cdr_id": cdr["cdr_id"],
            "billing_code": "DE-MOBIL",
            "billing_rate_name": "Mobilfunk Deutschland",
            "billing_rate": 0.09,
            "billing_cost": 0.27,
            "billing_duration": cdr["cdr_ended_at"] - cdr["cdr_answered_at"],
            "billing_group": "Vertrieb",
        }
        for cdr in cdrs
        if cdr["cdr_answered_at"] is not None
    ]


def recording_rows(starts: Iterable[datetime], seed: int = 0) -> list[dict[str, Any]]:
    """3CX v20 `recordings` rows, one per start time, each naming its own file."""
    rng = random.Random(seed)
    rows = []
    for index, start in enumerate(starts, start=1):
        extension = rng.choice(sorted(EXTENSIONS))
        number = phone_number(rng)
        name = EXTENSIONS[extension]
        file_name = recording_name(extension, name, number, start, index)
        rows.append(
            {
                "cl_participants_id": 1000 + index,
                "recording_url": f"{extension}/{file_name}",
                "start_time": start,
                "end_time": start + timedelta(seconds=rng.randrange(30, 600)),
                "transcription": f"Guten Tag, hier ist {name}. Es geht um Ihre Bestellung.",
                "archived": False,
                "call_type": 1,
                "summary": "Kunde fragt nach Lieferung",
                "transcribed": True,
                "emailed": False,
                "queue_dn": None,
            }
        )
    return rows


def link_recordings(rows: list[dict[str, Any]], history: ClHistory) -> list[dict[str, Any]]:
    """`recording_rows` naming a participant of the last call that began by their start: the
    call's own leg, which is as old as the recording or older."""
    calls = sorted(history.rows["cl_calls"], key=lambda call: call["start_time"])
    legs = {p["call_id"]: p["id"] for p in history.rows["cl_participants"]}
    for row in rows:
        started = [call for call in calls if call["start_time"] <= row["start_time"]]
        row["cl_participants_id"] = legs[started[-1]["id"]] if started else None
    return rows
