"""PII redaction: detection per type, placeholders, restore, continuation, labelled set.

Every value here is fake: published test numbers (cards, IBANs), documentation ranges
(example.com, 555-01xx, 192.0.2.0/24, 2001:db8::/32), or ids made up to pass their check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.safety.evaluation import evaluate, load_labelled
from stockade.safety.redaction import (
    SUPPORTED_TYPES,
    Redactor,
    UnsupportedEntityType,
    restore,
)
from stockade.safety.spans import Span, resolve_overlaps

LABELLED_LINES = Path(__file__).parent / "data" / "pii_lines.jsonl"
# Property tests cannot take function-scoped fixtures, and a Redactor keeps no state.
SHARED_REDACTOR = Redactor()

# Measured on the labelled set at the time of writing: precision 1.0 for every type,
# recall 1.0 except EMAIL (34 of 35) and PHONE (35 of 37). Each floor is the measured
# figure rounded down to two decimals, so one more error fails the test.
PRECISION_FLOOR = {
    "EMAIL": 1.0,
    "PHONE": 1.0,
    "CARD": 1.0,
    "IBAN": 1.0,
    "IP": 1.0,
    "NATIONAL_ID": 1.0,
}
RECALL_FLOOR = {
    "EMAIL": 0.97,
    "PHONE": 0.94,
    "CARD": 1.0,
    "IBAN": 1.0,
    "IP": 1.0,
    "NATIONAL_ID": 1.0,
}
# The labels the redactor misses today, each for a reason it does not try to handle.
KNOWN_MISSES = {
    # An address spelled out in words has no "@" to anchor on.
    ("Write to user at example dot com if the form fails.", "user at example dot com"),
    # Ofcom's drama range 07700 900xxx is not a valid number for libphonenumber.
    ("whatsapp +447700900123", "+447700900123"),
    # Seven digits without an area code are not a full number in the default regions.
    ("Call 555-0123 from the lobby phone.", "555-0123"),
}


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


def found(redactor: Redactor, text: str) -> list[tuple[str, str]]:
    return [(span.type, text[span.start : span.end]) for span in redactor.find(text)]


# Detection per type


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Reply to alice.moreau@example.com today", "alice.moreau@example.com"),
        ("<bob+billing@mail.example.org>", "bob+billing@mail.example.org"),
        ("mailto:frank@example.com?subject=Hi", "frank@example.com"),
        ("Write to o'brien@example.com.", "o'brien@example.com"),
        ("Escribe a josé.garcía@example.es", "josé.garcía@example.es"),
    ],
)
def test_email_found(redactor: Redactor, text: str, expected: str) -> None:
    assert found(redactor, text) == [("EMAIL", expected)]


@pytest.mark.parametrize(
    "text",
    [
        "Install lodash@4.17.21 first",
        "Follow @example for news",
        "admin@localhost has no domain",
        "3 @ $4.99 each",
    ],
)
def test_email_negatives(redactor: Redactor, text: str) -> None:
    assert found(redactor, text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call (202) 555-0143 now", "(202) 555-0143"),
        ("Phone: +44 20 7946 0018", "+44 20 7946 0018"),
        ("Bel +31 20 123 4567", "+31 20 123 4567"),
        ("Appelez le 06 12 34 56 78", "06 12 34 56 78"),
        ("Manchester 0161 496 0123", "0161 496 0123"),
        ("Llame al +34 912 345 678", "+34 912 345 678"),
    ],
)
def test_phone_found(redactor: Redactor, text: str, expected: str) -> None:
    assert found(redactor, text) == [("PHONE", expected)]


@pytest.mark.parametrize(
    "text",
    [
        "Order 4155550123 was refunded",
        "Ticket #2025550143 is closed",
        "See https://example.com/orders/2025550123 for it",
        "Shipped 2024-01-15 at 10:30",
        "Rejected 666-12-3456 as an SSN",
        "Total $1,234.56 for 3 items",
    ],
)
def test_phone_negatives(redactor: Redactor, text: str) -> None:
    assert found(redactor, text) == []


def test_phone_regions_change_national_numbers() -> None:
    text = "Ring 0161 496 0123 today"

    us_only = Redactor(phone_regions=["US"])
    uk_too = Redactor(phone_regions=["US", "GB"])

    assert found(us_only, text) == []
    assert found(uk_too, text) == [("PHONE", "0161 496 0123")]


def test_phone_regions_invalid() -> None:
    with pytest.raises(ValueError, match="invalid phone regions"):
        Redactor(phone_regions=["XX"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Card 4111 1111 1111 1111 exp 12/26", "4111 1111 1111 1111"),
        ("card_number=4242424242424242&cvc=1", "4242424242424242"),
        ("Amex 3782 822463 10005 declined", "3782 822463 10005"),
        ("Use 5555-5555-5555-4444 now", "5555-5555-5555-4444"),
        ("Diners 3056 930902 5904", "3056 930902 5904"),
    ],
)
def test_card_found(redactor: Redactor, text: str, expected: str) -> None:
    assert found(redactor, text) == [("CARD", expected)]


@pytest.mark.parametrize(
    "text",
    [
        "Card 4111 1111 1111 1112 failed",  # fails Luhn
        "Order 1234 5678 9012 3456 waits",  # no card network starts with 1
        "IMEI 490154203237518 is lost",  # passes Luhn, but 15 digits starting with 4
        "Batch 9999999999999995 passed",  # passes Luhn, no network starts with 9
        "Drawn 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",  # single digits, not a printed card
        "Id 4111111111111111abc is a token",  # glued to letters
    ],
)
def test_card_negatives(redactor: Redactor, text: str) -> None:
    assert all(entity_type != "CARD" for entity_type, _ in found(redactor, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("IBAN GB82 WEST 1234 5698 7654 32, BIC WESTGB2L", "GB82 WEST 1234 5698 7654 32"),
        ("Pay DE89370400440532013000 EUR today", "DE89370400440532013000"),
        ("Compte FR14 2004 1010 0505 0001 3M02 606 chez", "FR14 2004 1010 0505 0001 3M02 606"),
        ("iban: gb33bukb20201555555555", "gb33bukb20201555555555"),
    ],
)
def test_iban_found(redactor: Redactor, text: str, expected: str) -> None:
    assert found(redactor, text) == [("IBAN", expected)]


@pytest.mark.parametrize(
    "text",
    [
        "IBAN GB82 WEST 1234 5698 7654 33 is wrong",  # checksum
        "BIC DEUTDEFF500 only",
        "Code DE12 ABCD 5678 is a product",
        "Ref DE89370400440532013000123 is too long for Germany",
        "Part AB12 3456 7890 1234 56 has no IBAN country",
    ],
)
def test_iban_negatives(redactor: Redactor, text: str) -> None:
    assert found(redactor, text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Blocked 192.0.2.44 after 10 tries", "192.0.2.44"),
        ("From 198.51.100.7:52344 in 120 ms", "198.51.100.7"),
        ("Gateway 2001:db8::1 is down.", "2001:db8::1"),
        ("Connect to [2001:db8::42]:8443", "2001:db8::42"),
        ("Client ::ffff:192.0.2.128 was limited", "::ffff:192.0.2.128"),
        ("Link-local fe80::1%eth0 answered.", "fe80::1%eth0"),
    ],
)
def test_ip_found(redactor: Redactor, text: str, expected: str) -> None:
    assert found(redactor, text) == [("IP", expected)]


@pytest.mark.parametrize(
    "text",
    [
        "Upgrade to version 1.2.3.4 today",
        "See section 3.1.4.2 of the handbook",
        "The value 256.1.1.1 is not an address",
        "At 12:30:45 in room 4",
        "MAC 00:1A:2B:3C:4D:5E is allowed",
        "Use std::vector in C++",
    ],
)
def test_ip_negatives(redactor: Redactor, text: str) -> None:
    assert found(redactor, text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SSN 123-45-6789 on the W-2", "123-45-6789"),
        ("My SSN is 219456789.", "219456789"),
        ("NINO: AB 12 34 56 C", "AB 12 34 56 C"),
        ("BSN: 111222333", "111222333"),
        ("DNI 12345678Z y más", "12345678Z"),
        ("DNI 12.345.678-Z", "12.345.678-Z"),
        ("NIE X1234567L", "X1234567L"),
        ("Numéro 2 69 02 99 341 732 85", "2 69 02 99 341 732 85"),
        ("NIR 184057510804216", "184057510804216"),
        ("Steuer-ID: 45 803 371 295", "45 803 371 295"),
        ("Codice fiscale RCCMNL83S18D969H", "RCCMNL83S18D969H"),
    ],
)
def test_national_id_found(redactor: Redactor, text: str, expected: str) -> None:
    assert found(redactor, text) == [("NATIONAL_ID", expected)]


@pytest.mark.parametrize(
    "text",
    [
        "SSN 000-12-3456 is invalid",  # area 000 is never issued
        "Example 078-05-1120 from the wallet",  # a published SSN that stdnum rejects
        "NINO QQ 12 34 56 C from the manual",  # Q is never a prefix letter
        "Prefix GB123456A is not allocated",
        "Order 111222333 was split",  # a valid BSN, but with no BSN label
        "Reference 123456782 on the invoice",
        "Account 45803371295 has no tax id",  # the label comes after the number
        "Code 12345678A has the wrong letter",
    ],
)
def test_national_id_negatives(redactor: Redactor, text: str) -> None:
    assert found(redactor, text) == []


def test_national_id_label_covers_one_number(redactor: Redactor) -> None:
    # Both are valid BSNs; the label is followed by the first number only.
    text = "BSN: 111222333, ref 123456782"

    assert found(redactor, text) == [("NATIONAL_ID", "111222333")]


def test_person_unsupported() -> None:
    assert "PERSON" not in Redactor.types
    assert "PERSON" not in Redactor().types

    with pytest.raises(UnsupportedEntityType, match="PERSON detection is not built"):
        Redactor(types=["EMAIL", "PERSON"])


def test_types_subset() -> None:
    redactor = Redactor(types=["EMAIL"])
    text = "Mail alice@example.com or call (202) 555-0143"

    result = redactor.redact(text)

    assert redactor.types == frozenset({"EMAIL"})
    assert result.text == "Mail <EMAIL_1> or call (202) 555-0143"


def test_types_unknown() -> None:
    with pytest.raises(UnsupportedEntityType, match="unknown entity types"):
        Redactor(types=["EMAIL", "PASSPORT"])


def test_supported_types() -> None:
    assert Redactor.types == SUPPORTED_TYPES
    assert {"EMAIL", "PHONE", "CARD", "IBAN", "IP", "NATIONAL_ID"} == SUPPORTED_TYPES


# Placeholders and overlaps


def test_redact_numbers_per_type(redactor: Redactor) -> None:
    text = (
        "alice@example.com, (202) 555-0143, bob@example.org, "
        "alice@example.com, 4111 1111 1111 1111, (202) 555-0143"
    )

    result = redactor.redact(text)

    assert result.text == "<EMAIL_1>, <PHONE_1>, <EMAIL_2>, <EMAIL_1>, <CARD_1>, <PHONE_1>"
    assert result.mapping == {
        "<EMAIL_1>": "alice@example.com",
        "<PHONE_1>": "(202) 555-0143",
        "<EMAIL_2>": "bob@example.org",
        "<CARD_1>": "4111 1111 1111 1111",
    }
    assert result.counts == {"EMAIL": 2, "PHONE": 1, "CARD": 1}
    assert len(result.entities) == 6


def test_redact_values_compared_as_written(redactor: Redactor) -> None:
    result = redactor.redact("Call (202) 555-0143 or +1 202 555 0143")

    assert result.text == "Call <PHONE_1> or <PHONE_2>"
    assert result.counts == {"PHONE": 2}


def test_redact_entities_offsets(redactor: Redactor) -> None:
    text = "IBAN GB82 WEST 1234 5698 7654 32 from 192.0.2.1"

    result = redactor.redact(text)

    for entity in result.entities:
        assert text[entity.start : entity.end] == entity.value
        assert result.mapping[entity.placeholder] == entity.value
    assert [entity.type for entity in result.entities] == ["IBAN", "IP"]


def test_redact_nothing_found(redactor: Redactor) -> None:
    result = redactor.redact("Please summarise the attached meeting notes.")

    assert result.text == "Please summarise the attached meeting notes."
    assert result.mapping == {}
    assert result.counts == {}


def test_overlap_longer_span_wins(redactor: Redactor) -> None:
    # The card number is inside the e-mail address; the address is longer.
    text = "Mail 4111111111111111@example.com"
    # The IPv4 address is the tail of a longer IPv6 address.
    mapped = "Client ::ffff:192.0.2.128 here"

    assert found(redactor, text) == [("EMAIL", "4111111111111111@example.com")]
    assert found(redactor, mapped) == [("IP", "::ffff:192.0.2.128")]


def test_overlap_same_length_specific_type_wins() -> None:
    phone = Span("PHONE", 5, 14)
    national_id = Span("NATIONAL_ID", 5, 14)
    shorter = Span("IP", 12, 20)

    chosen = resolve_overlaps([phone, shorter, national_id])

    assert chosen == [national_id]


def test_repr_hides_values(redactor: Redactor) -> None:
    result = redactor.redact("SSN 123-45-6789, mail alice@example.com")

    assert "123-45-6789" not in repr(result)
    assert "alice@example.com" not in repr(result)
    assert "123-45-6789" not in repr(result.entities)
    assert "<NATIONAL_ID_1>" in repr(result)


# Look-alike placeholders and restore


def test_lookalike_escaped(redactor: Redactor) -> None:
    text = "The literal <EMAIL_1> and <\\PHONE_2> stay; alice@example.com goes"

    result = redactor.redact(text)

    assert result.text == "The literal <\\EMAIL_1> and <\\\\PHONE_2> stay; <EMAIL_1> goes"
    assert restore(result.text, result.mapping) == text


def test_restore_unknown_placeholder_kept() -> None:
    mapping = {"<EMAIL_1>": "alice@example.com"}

    restored = restore("<EMAIL_1> wrote to <EMAIL_2> and <PERSON_1>", mapping)

    assert restored == "alice@example.com wrote to <EMAIL_2> and <PERSON_1>"


def test_restore_single_pass() -> None:
    # A restored value that looks like a placeholder is not replaced again.
    mapping = {"<EMAIL_1>": "<EMAIL_2>", "<EMAIL_2>": "bob@example.org"}

    assert restore("<EMAIL_1>", mapping) == "<EMAIL_2>"


def test_restore_model_output(redactor: Redactor) -> None:
    result = redactor.redact("Write to alice@example.com about card 4111 1111 1111 1111")
    answer = "I will email <EMAIL_1> and mask <CARD_1> as ending in 1111."

    restored = restore(answer, result.mapping)

    assert restored == (
        "I will email alice@example.com and mask 4111 1111 1111 1111 as ending in 1111."
    )


_PII_FRAGMENTS = [
    "alice@example.com",
    "bob+tag@example.org",
    "(202) 555-0143",
    "+44 20 7946 0018",
    "4111 1111 1111 1111",
    "4111 1111 1111 1112",
    "GB82 WEST 1234 5698 7654 32",
    "DE89370400440532013000",
    "192.0.2.1",
    "2001:db8::1",
    "123-45-6789",
    "AB123456C",
    "BSN 111222333",
]
_TRICKY_FRAGMENTS = [
    "<EMAIL_1>",
    "<\\EMAIL_1>",
    "<\\\\PHONE_12>",
    "<CARD_",
    "_1>",
    "<",
    ">",
    "\\",
    "@",
    ".",
    ":",
    "-",
    " ",
    "\n",
    "0",
    "1234",
    "order 4155550123",
    "version 1.2.3.4",
]
_FRAGMENT = st.one_of(
    st.sampled_from(_PII_FRAGMENTS),
    st.sampled_from(_TRICKY_FRAGMENTS),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_FRAGMENT, max_size=12))
def test_restore_round_trip(fragments: list[str]) -> None:
    text = "".join(fragments)
    result = SHARED_REDACTOR.redact(text)

    assert restore(result.text, result.mapping) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(_FRAGMENT, max_size=6), min_size=1, max_size=4))
def test_restore_round_trip_in_pieces(messages: list[list[str]]) -> None:
    texts = ["".join(fragments) for fragments in messages]
    mapping: dict[str, str] = {}
    redacted: list[str] = []

    for text in texts:
        result = SHARED_REDACTOR.redact(text, start=mapping)
        mapping = result.mapping
        redacted.append(result.text)

    assert [restore(text, mapping) for text in redacted] == texts


# Continuing from an earlier mapping


def test_start_reuses_and_continues(redactor: Redactor) -> None:
    first = redactor.redact("From alice@example.com, call (202) 555-0143")
    start = dict(first.mapping)

    second = redactor.redact("Cc bob@example.org and alice@example.com", start=first.mapping)

    assert second.text == "Cc <EMAIL_2> and <EMAIL_1>"
    assert second.mapping == {
        "<EMAIL_1>": "alice@example.com",
        "<PHONE_1>": "(202) 555-0143",
        "<EMAIL_2>": "bob@example.org",
    }
    assert second.counts == {"EMAIL": 2}
    assert first.mapping == start


def test_start_numbering_after_gaps(redactor: Redactor) -> None:
    start = {"<EMAIL_7>": "old@example.com", "<IP_2>": "192.0.2.9"}

    result = redactor.redact("new@example.com from 192.0.2.9", start=start)

    assert result.text == "<EMAIL_8> from <IP_2>"


def test_start_same_value_other_type(redactor: Redactor) -> None:
    # The start mapping calls this string a phone; found as a BSN it gets its own type.
    start = {"<PHONE_1>": "111222333"}

    result = redactor.redact("BSN: 111222333", start=start)

    assert result.text == "BSN: <NATIONAL_ID_1>"


@pytest.mark.parametrize("key", ["EMAIL_1", "<EMAIL_0>", "<NAME_1>", "<email_1>"])
def test_start_invalid_placeholder(redactor: Redactor, key: str) -> None:
    with pytest.raises(ValueError, match="invalid placeholder") as raised:
        redactor.redact("alice@example.com", start={key: "secret@example.com"})

    assert "secret@example.com" not in str(raised.value)


# The labelled set


def test_labelled_set_size() -> None:
    lines = load_labelled(LABELLED_LINES)
    types = {label[0] for line in lines for label in line.labels}

    assert len(lines) >= 120
    assert types == SUPPORTED_TYPES
    assert sum(1 for line in lines if not line.labels) >= 40


def test_labelled_set_floors(redactor: Redactor) -> None:
    evaluation = evaluate(redactor, load_labelled(LABELLED_LINES))

    for entity_type, floor in PRECISION_FLOOR.items():
        score = evaluation.scores[entity_type]
        assert score.precision >= floor, (entity_type, score, evaluation.false_positives)
    for entity_type, floor in RECALL_FLOOR.items():
        score = evaluation.scores[entity_type]
        assert score.recall >= floor, (entity_type, score, evaluation.false_negatives)


def test_labelled_set_only_known_misses(redactor: Redactor) -> None:
    evaluation = evaluate(redactor, load_labelled(LABELLED_LINES))
    misses = {(text, text[start:end]) for text, (_, start, end) in evaluation.false_negatives}

    assert evaluation.false_positives == []
    assert misses <= KNOWN_MISSES
