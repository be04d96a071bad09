from __future__ import annotations

import pytest

from tracker.core.ids import NotTextError, iter_id_tokens, parse_order_id, parse_order_ids, split_id_text


@pytest.mark.parametrize("raw", [1, "1", " 42 ", "9223372036854775807", 9223372036854775807])
def test_valid_ids(raw: object) -> None:
    assert parse_order_id(raw) == int(str(raw).strip())


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("abc", "not a positive whole number"),
        ("-5", "not a positive whole number"),
        (-5, "positive"),
        (0, "positive"),
        ("0", "positive"),
        ("", "empty"),
        ("   ", "empty"),
        (10**30, "too large"),
        ("1" + "0" * 30, "too large"),
        ("9223372036854775808", "too large"),
        (1.5, "type float"),
        (True, "boolean"),
        (None, "type NoneType"),
        ("١٢٣", "not a positive whole number"),
        ({"id": 1}, "type dict"),
    ],
)
def test_invalid_ids_have_reasons(raw: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_order_id(raw)


def test_valid_ids_survive_invalid_neighbours_and_duplicates_fold() -> None:
    parsed = parse_order_ids(["1", "x", 2, "1", -3, "3"])
    assert parsed.valid == [1, 2, 3]
    assert [refused.given for refused in parsed.rejected] == ["'x'", "-3"]
    assert parsed.duplicates == 1


def test_file_text_separators_and_comments() -> None:
    text = "1, 2 3\n# a comment 99\n\n4;5 # trailing 100\n\t6\n"
    assert split_id_text(text) == ["1", "2", "3", "4", "5", "6"]


def test_streaming_tokens_match_whole_text_whatever_the_chunking() -> None:
    text = "".join(f"{n}{',' if n % 3 else chr(10)}" for n in range(1, 500)) + "# end 7\n8"
    expected = split_id_text(text)
    for size in (1, 7, 64, 10_000):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(iter_id_tokens(chunks)) == expected


def test_an_endless_line_is_cut_at_separators_with_bounded_memory() -> None:
    chunks = ["123 " * 1000] * 50
    tokens = list(iter_id_tokens(chunks, max_line=4096))
    assert tokens == ["123"] * 50_000


def test_binary_data_is_refused() -> None:
    with pytest.raises(NotTextError):
        list(iter_id_tokens(["12\n", "\x00\x01\x02"]))


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("12x", "'12x'"),
        ("", "''"),
        (" 7 a", "' 7 a'"),
        (-7, "-7"),
        (None, "None"),
        ([3], "[3]"),
        # An over-long number is named: it cannot be a secret, and the shop looks for it.
        (10**30, str(10**30)),
        # A digit string up to 20 characters too (no valid ID has more than 19 digits).
        ("12345678901234567890", "'12345678901234567890'"),
        ("9999999999999999999 ", "'9999999999999999999 '"),
        # Up to 16 characters, whatever repr() makes of them.
        ("abcdefgh\tijklmno", "'abcdefgh\\tijklmno'"),
        ("ключ-ключ-ключ-к", "'ключ-ключ-ключ-к'"),
    ],
)
def test_a_refused_value_is_named_as_given_when_short_or_numeric(raw: object, named: str) -> None:
    # ``given`` for people, ``value`` for the shop's program: what it sent.
    assert parse_order_ids([raw]).rejected == [(named, parse_reason(raw), raw if raw != [3] else "[3]")]


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        # An API key passed as an order ID by mistake: named by its length, never echoed.
        ("sk-live-0123456789abcdef0123456789abcdef", "a string of 40 characters"),
        ("0123456789abcdef0123456789abcdef", "a string of 32 characters"),
        ("0123456789abcdef0", "a string of 17 characters"),
        # Digits only: a longer run is no order ID, and may be a numeric secret.
        ("012345678901234567890", "a string of 21 characters"),
        ("1" + "0" * 30, "a string of 31 characters"),
        (["sk-live-0123456789abcdef"], "a list of 1 item"),
        ({"key": "sk-live-0123456789abcdef"}, "a dict of 1 item"),
    ],
)
def test_a_long_refused_value_is_named_by_its_type_and_length_only(raw: object, named: str) -> None:
    [(given, _reason, value)] = parse_order_ids([raw]).rejected
    assert given == value == named
    assert "0123456789abcdef" not in given


def parse_reason(raw: object) -> str:
    try:
        parse_order_id(raw)
    except ValueError as error:
        return str(error)
    raise AssertionError(f"{raw!r} was accepted")
