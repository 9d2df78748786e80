"""The presets' data: per PBX table, the columns that name a party (holds by number, `erase`
and `find` match them) and how each personal field is anonymized (docs/anonymization.md)."""

from __future__ import annotations

from typing import Any

# FreePBX/Asterisk `cdr`: the columns that name a party (clid as a caller id, `"Name" <number>`),
# and how each personal field is anonymized. uniqueid/linkedid encode the call's time to the
# second, channels and lastdata the numbers dialled, recordingfile both: blanked, not truncated.
CDR_SUBJECTS = ["src", "dst", "cnum", "did", "outbound_cnum", "clid"]
CDR_ANONYMIZE: dict[str, Any] = {
    "src": "truncate_digits",
    "dst": "truncate_digits",
    "cnum": "truncate_digits",
    "did": "truncate_digits",
    "outbound_cnum": "truncate_digits",
    "clid": "blank",
    "cnam": "blank",
    "outbound_cnam": "blank",
    "dst_cnam": "blank",
    "uniqueid": "blank",
    "linkedid": "blank",
    "channel": "blank",
    "dstchannel": "blank",
    "lastdata": "blank",
    "recordingfile": "blank",
    "userfield": "blank",
}
# Columns of the plain Asterisk cdr table that cdr_adaptive_odbc and cdr_pgsql write (clid:
# "Name" <number>)
ASTERISK_CDR_SUBJECTS = ["src", "dst", "clid"]
# ... and the transform of each CDR field, wherever a cdr_sqlite3_custom mapping puts it
ASTERISK_CDR_ANONYMIZE: dict[str, Any] = {
    "src": "truncate_digits",
    "dst": "truncate_digits",
    "clid": "blank",
    "channel": "blank",
    "dstchannel": "blank",
    "lastdata": "blank",
    "uniqueid": "blank",
    "userfield": "blank",
}
CEL_SUBJECTS = ["cid_num", "cid_ani", "cid_rdnis", "cid_dnid", "exten"]
CEL_ANONYMIZE: dict[str, Any] = {
    "cid_name": "blank",
    "cid_num": "truncate_digits",
    "cid_ani": "truncate_digits",
    "cid_rdnis": "truncate_digits",
    "cid_dnid": "truncate_digits",
    "exten": "truncate_digits",
    "channame": "blank",
    "appdata": "blank",
    "uniqueid": "blank",
    "linkedid": "blank",
    "peer": "blank",
    "extra": "blank",
}
# FreePBX queuelog: callid is the call's uniqueid, data1..data5 carry caller ids and positions
QUEUELOG_ANONYMIZE: dict[str, Any] = {
    "callid": "blank",
    "agent": "blank",
    "data1": "blank",
    "data2": "blank",
    "data3": "blank",
    "data4": "blank",
    "data5": "blank",
}
# cdr_csv's Master.csv by position: src 1, dst 2, clid 4, channel 5, dstchannel 6, lastdata 8,
# uniqueid 16, userfield 17
CSV_ANONYMIZE: dict[str, Any] = {
    "1": "truncate_digits",
    "2": "truncate_digits",
    "4": "blank",
    "5": "blank",
    "6": "blank",
    "8": "blank",
    "16": "blank",
    "17": "blank",
}

# For the 3cx preset (`action: anonymize`): every column of either layout that carries a number,
# a name or a file name naming them; the layout this PBX does not have is ignored. Numbers keep
# all but their last three digits (area and exchange stay for statistics); names and caller ids
# that may be either are blanked. Internal ids (uuids, participant ids) only link a call's rows.
THREECX_ANONYMIZE: dict[str, str | dict[str, Any]] = {
    "cl_party_info.dn": "truncate_digits",
    "cl_party_info.caller_number": "truncate_digits",
    "cl_party_info.did_number": "truncate_digits",
    "cl_party_info.display_name": "blank",
    "cl_party_info.firstlastname": "blank",
    "cl_participants.recording_url": "blank",
    "cl_quality.a_caller": "blank",
    "cl_quality.b_caller": "blank",
    "cl_quality.a_number": "truncate_digits",
    "cl_quality.b_number": "truncate_digits",
    "cl_quality.a_name": "blank",
    "cl_quality.b_name": "blank",
    "cdroutput.source_dn_number": "truncate_digits",
    "cdroutput.source_dn_name": "blank",
    "cdroutput.source_participant_name": "blank",
    "cdroutput.source_participant_phone_number": "truncate_digits",
    "cdroutput.source_participant_trunk_did": "truncate_digits",
    "cdroutput.destination_dn_number": "truncate_digits",
    "cdroutput.destination_dn_name": "blank",
    "cdroutput.destination_participant_name": "blank",
    "cdroutput.destination_participant_phone_number": "truncate_digits",
}
