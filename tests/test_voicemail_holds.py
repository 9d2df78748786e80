"""Holds and data subjects in the voicemail spool: a held message stays whole under its number,
`find` lists exactly one person's messages (by caller id in any number form, or their mailbox),
and an erasure removes exactly those that no hold keeps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from spool import Message, add_message, message_txt

from retentiond.policy.rules import Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.voicemail.store import VoicemailStore

CUTOFF = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)
LONG_AGO = CUTOFF - timedelta(days=120)
YOUNG = CUTOFF + timedelta(days=5)
ERASED_AT = CUTOFF + timedelta(days=30)

SUBJECT = Subject.parse(numbers=["+4930123456"])
WITH_MAILBOX = Subject.parse(numbers=["+4930123456"], extensions=["2001"])


class Spool:
    """Messages of the subject (caller id in three forms, and mailbox 2001) and of strangers."""

    def __init__(self, root: Path) -> None:
        def message(
            mailbox: str, folder: str, number: int, when: datetime, callerid: str
        ) -> Message:
            return add_message(root, mailbox, folder, number, origtime=when, callerid=callerid)

        self.root = root
        self.dialled = message("1001", "INBOX", 0, LONG_AGO, '"Erika M" <030123456>')
        self.stranger = message("1001", "INBOX", 1, LONG_AGO, '"Max" <+4917612345678>')
        self.bare = message("1001", "INBOX", 2, LONG_AGO + timedelta(days=1), "+4930123456")
        self.young = message("1001", "INBOX", 3, YOUNG, '"Erika M" <004930123456>')
        self.lookalike = message("1002", "Old", 0, LONG_AGO, '"Unknown" <0301234567>')
        self.in_mailbox = message("2001", "INBOX", 0, LONG_AGO, '"Max" <+4917612345678>')

    def where(self, message: Message) -> str:
        return str(message.folder.relative_to(self.root) / message.stem)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "voicemail")


@pytest.fixture
def store(spool: Spool, open_voicemail_store: Callable[..., VoicemailStore]) -> VoicemailStore:
    return open_voicemail_store(spool.root, lock_wait=0.2)


def contents(message: Message) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in message.paths}


def enforce(store: VoicemailStore, holds: Holds) -> int:
    return sum(store.apply(batch, CUTOFF).deleted for batch in store.batches(CUTOFF, holds))


def erase(store: VoicemailStore, subject: Subject, holds: Holds) -> int:
    batches = store.subject_batches(subject, holds)
    return sum(store.apply(batch, ERASED_AT).deleted for batch in batches)


# -- holds ---------------------------------------------------------------------------------------


def test_held_messages_stay_whole_under_their_numbers_while_their_neighbours_expire(
    spool: Spool, store: VoicemailStore
) -> None:
    holds = Holds((HoldScope("HOLD-2026-07", subject=SUBJECT),))
    before = {spool.where(m): contents(m) for m in (spool.dialled, spool.bare)}

    survey = store.survey(CUTOFF, holds)
    deleted = enforce(store, holds)

    assert (survey.held, survey.held_by, survey.expired) == (2, {"HOLD-2026-07": 2}, 3)
    assert deleted == 3
    # msg0001 between them is gone; msg0000 and msg0002 keep their numbers, audio and .txt.
    assert {spool.where(m): contents(m) for m in (spool.dialled, spool.bare)} == before
    assert spool.stranger.gone() and spool.lookalike.gone() and spool.in_mailbox.gone()
    assert spool.young.exists()


def test_hold_by_extension_keeps_the_mailbox_whoever_called(
    spool: Spool, store: VoicemailStore
) -> None:
    holds = Holds((HoldScope("HOLD-MAILBOX", subject=Subject.parse(extensions=["2001"])),))

    survey = store.survey(CUTOFF, holds)
    enforce(store, holds)

    assert (survey.held, survey.held_by) == (1, {"HOLD-MAILBOX": 1})
    assert spool.in_mailbox.exists()
    assert spool.dialled.gone() and spool.stranger.gone() and spool.bare.gone()


def test_hold_window_without_a_subject_holds_every_message_of_its_days(
    spool: Spool, store: VoicemailStore
) -> None:
    start = LONG_AGO + timedelta(days=1)
    holds = Holds((HoldScope("HOLD-DAY", start, start + timedelta(days=1)),))

    survey = store.survey(CUTOFF, holds)
    enforce(store, holds)

    assert survey.held == 1
    assert spool.bare.exists()
    assert spool.dialled.gone() and spool.stranger.gone()


# -- data subjects -------------------------------------------------------------------------------


def test_find_lists_exactly_the_subjects_messages_by_caller_id_and_mailbox(
    spool: Spool, store: VoicemailStore
) -> None:
    holds = Holds((HoldScope("HOLD-2026-07", subject=SUBJECT),))

    found = {item.where: item for item in store.find(WITH_MAILBOX, holds)}

    assert store.subject_fields() == ["callerid", "mailbox"]
    own = (spool.dialled, spool.bare, spool.young, spool.in_mailbox)
    assert set(found) == {spool.where(message) for message in own}
    assert found[spool.where(spool.dialled)].fields == {"callerid": '"Erika M" <030123456>'}
    assert found[spool.where(spool.in_mailbox)].fields == {"mailbox": "2001"}
    assert found[spool.where(spool.young)].when == YOUNG
    held = {where for where, item in found.items() if item.held}
    assert held == {spool.where(m) for m in (spool.dialled, spool.bare, spool.young)}


def test_erase_removes_the_subjects_messages_of_any_age_and_keeps_held_ones(
    spool: Spool, store: VoicemailStore
) -> None:
    start = LONG_AGO + timedelta(days=1)
    holds = Holds((HoldScope("HOLD-DAY", start, start + timedelta(days=1), SUBJECT),))
    held_before = contents(spool.bare)

    deleted = erase(store, WITH_MAILBOX, holds)

    assert deleted == 3
    assert spool.dialled.gone() and spool.young.gone() and spool.in_mailbox.gone()
    assert contents(spool.bare) == held_before
    assert spool.stranger.exists() and spool.lookalike.exists()
    assert [item.where for item in store.find(WITH_MAILBOX, holds)] == [spool.where(spool.bare)]
    assert not list(spool.root.rglob(".lock*"))


def test_erase_takes_a_message_whose_txt_has_no_origtime(
    spool: Spool, store: VoicemailStore
) -> None:
    txt = message_txt(origtime=LONG_AGO, mailbox="1002", callerid="+4930123456", sequence=7)
    malformed = "\n".join(line for line in txt.splitlines() if not line.startswith("origtime"))
    message = add_message(spool.root, "1002", "INBOX", 0, origtime=LONG_AGO, txt=malformed + "\n")

    found = [item for item in store.find(SUBJECT) if item.where == spool.where(message)]
    enforce(store, Holds())
    kept_by_expiry = message.exists()
    erase(store, SUBJECT, Holds())

    assert [(item.when, item.held) for item in found] == [(None, False)]
    assert kept_by_expiry
    assert message.gone()


def test_a_message_naming_two_callers_is_held_by_either(
    spool: Spool, store: VoicemailStore
) -> None:
    # Asterisk writes one callerid; a second one added makes the .txt malformed (never aged),
    # and a hold on the second caller's number still keeps it from the first caller's erasure.
    txt = message_txt(origtime=LONG_AGO, mailbox="1002", callerid="+4917612345678", sequence=7)
    message = add_message(
        spool.root, "1002", "INBOX", 0, origtime=LONG_AGO, txt=txt + "callerid=+4930123456\n"
    )
    holds = Holds((HoldScope("HOLD-2026-07", subject=SUBJECT),))
    stranger = Subject.parse(numbers=["+4917612345678"])

    erase(store, stranger, holds)

    assert message.exists()
    assert [item.held for item in store.find(SUBJECT, holds) if "1002" in item.where] == [True]
