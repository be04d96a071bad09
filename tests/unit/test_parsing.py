from __future__ import annotations

import json
import traceback
from html import escape as html_escape
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.core.status import OrderStatus, RefillStatus
from tracker.apiv2 import parsing
from tracker.apiv2.messages import refuses_batch_form
from tracker.apiv2.errors import (
    IncorrectRequest,
    InsufficientFunds,
    InvalidKey,
    NotJSON,
    ProviderError,
    ProviderRefused,
    ProviderRejected,
    UnexpectedShape,
    UnusableRefillId,
)
from tracker.apiv2.types import (
    Balance,
    CancelAccepted,
    CatalogService,
    ItemError,
    OrderReport,
    RefillReport,
)
from tracker.sim.faults import codeigniter_error_block

SEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "seeds"
KEY = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def seed(name: str) -> str:
    return (SEEDS / name).read_text(encoding="utf-8")


def partial_usd() -> OrderReport:
    return OrderReport(OrderStatus.PARTIAL, "Partial", Decimal("0.27819"), 3572, 157, "USD")


def in_progress(currency: str | None) -> OrderReport:
    return OrderReport(
        OrderStatus.IN_PROGRESS, "In progress", Decimal("1.44219"), 234, 10, currency
    )


def panel_services(cancel: bool | None, description: str | None) -> list[CatalogService]:
    return [
        CatalogService(1, "Followers", "Default", "First Category", Decimal("0.90"), 50, 10000,
                True, cancel, description),
        CatalogService(2, "Comments", "Custom Comments", "Second Category", Decimal("8"), 10, 1500,
                False, cancel, description),
    ]


COMPLETED = RefillReport(RefillStatus.COMPLETED, "Completed")
REJECTED = RefillReport(RefillStatus.REJECTED, "Rejected")

# fixture file -> (parser, exact expected value)
EXPECTED: dict[str, tuple[Callable[[str], object], object]] = {
    "000_services.json": (parsing.parse_services, panel_services(True, None)),
    "002_services.json": (parsing.parse_services, panel_services(True, None)),
    "004_services.json": (parsing.parse_services, panel_services(True, None)),
    "003_services.json": (parsing.parse_services, panel_services(None, "Some Description")),
    "001_services.json": (parsing.parse_services, [
        CatalogService(1, "Youtube views", "Default", "Youtube", Decimal("2.5"), 200, 10000,
                True, None, None),
        CatalogService(2, "Facebook comments", "Custom Comments", "Facebook", Decimal("4"), 10, 1500,
                False, None, None),
    ]),
    "000_add.json": (parsing.parse_add, 23501),
    "002_add.json": (parsing.parse_add, 23501),
    "003_add.json": (parsing.parse_add, 23501),
    "004_add.json": (parsing.parse_add, 23501),
    "000_status.json": (parsing.parse_status, partial_usd()),
    "002_status.json": (parsing.parse_status, partial_usd()),
    "003_status.json": (parsing.parse_status, partial_usd()),
    "004_status.json": (parsing.parse_status, partial_usd()),
    "001_status.json": (parsing.parse_status, OrderReport(
        OrderStatus.COMPLETED, "Completed", Decimal("2.5"), 168, -2, None)),
    "000_status_multi.json": (parsing.parse_status_multi, {
        1: partial_usd(), 10: ItemError("Incorrect order ID"), 100: in_progress("USD")}),
    "002_status_multi.json": (parsing.parse_status_multi, {
        1: partial_usd(), 10: ItemError("Incorrect order ID"), 100: in_progress("USD")}),
    "003_status_multi.json": (parsing.parse_status_multi, {
        1: partial_usd(), 10: ItemError("Incorrect order ID"), 100: in_progress("USD")}),
    "001_status_multi.json": (parsing.parse_status_multi, {
        123: OrderReport(OrderStatus.PARTIAL, "Partial", Decimal("0.27819"), 3572, 157, None),
        456: ItemError("Incorrect order ID"),
        789: in_progress(None)}),
    "000_refill.json": (parsing.parse_refill, "1"),
    "002_refill.json": (parsing.parse_refill, "1"),
    "003_refill.json": (parsing.parse_refill, "1"),
    "004_refill.json": (parsing.parse_refill, "1"),
    "000_refill_multi.json": (parsing.parse_refill_multi, {
        1: "1", 2: "2", 3: ItemError("Incorrect order ID")}),
    "002_refill_multi.json": (parsing.parse_refill_multi, {
        1: "1", 2: "2", 3: ItemError("Incorrect order ID")}),
    "000_refill_status.json": (parsing.parse_refill_status, COMPLETED),
    "001_refill_status.json": (parsing.parse_refill_status, COMPLETED),
    "002_refill_status.json": (parsing.parse_refill_status, COMPLETED),
    "003_refill_status.json": (parsing.parse_refill_status, COMPLETED),
    "004_refill_status.json": (parsing.parse_refill_status, COMPLETED),
    "000_refill_status_multi.json": (parsing.parse_refill_status_multi, {
        "1": COMPLETED, "2": REJECTED, "3": ItemError("Refill not found")}),
    "002_refill_status_multi.json": (parsing.parse_refill_status_multi, {
        "1": COMPLETED, "2": REJECTED, "3": ItemError("Refill not found")}),
    "001_refill_status_multi.json": (parsing.parse_refill_status_multi, {
        "1": COMPLETED, "2": REJECTED, "3": ItemError("Incorrect refill ID")}),
    "002_cancel.json": (parsing.parse_cancel, {
        9: ItemError("Incorrect order ID"), 2: CancelAccepted("1")}),
    "000_balance.json": (parsing.parse_balance, Balance(Decimal("100.84292"), "USD")),
    "002_balance.json": (parsing.parse_balance, Balance(Decimal("100.84292"), "USD")),
    "003_balance.json": (parsing.parse_balance, Balance(Decimal("100.84292"), "USD")),
    "004_balance.json": (parsing.parse_balance, Balance(Decimal("100.84292"), "USD")),
    "001_balance.json": (parsing.parse_balance, Balance(Decimal("68.6868"), "USD")),
}
BROKEN = {"004_status_multi_broken.json"}


def test_every_fixture_has_an_expectation() -> None:
    on_disk = {path.name for path in SEEDS.glob("*.json")}
    assert on_disk == set(EXPECTED) | BROKEN


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_fixture_parses_to_exact_values(name: str) -> None:
    parse, expected = EXPECTED[name]
    assert parse(seed(name)) == expected


def test_money_keeps_the_providers_digits() -> None:
    # Decimal("0.90") == Decimal("0.9"), so equality alone would not notice lost digits.
    services = parsing.parse_services(seed("000_services.json"))
    assert [str(service.rate) for service in services] == ["0.90", "8"]
    report = parsing.parse_status(seed("000_status.json"))
    assert isinstance(report, OrderReport)
    assert str(report.charge) == "0.27819"
    assert str(parsing.parse_balance(seed("000_balance.json")).amount) == "100.84292"


def test_seed_004_broken_multi_status_is_not_json() -> None:
    with pytest.raises(NotJSON) as caught:
        parsing.parse_status_multi(seed("004_status_multi_broken.json"))
    assert caught.value.action == "status"
    assert "status" in str(caught.value)


# --- numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{"charge": "0.27819", "start_count": "3572", "remains": "157", "status": "Partial"}',
        '{"charge": 0.27819, "start_count": 3572, "remains": 157, "status": "Partial"}',
        '{"charge": " 0.27819 ", "start_count": 3572.0, "remains": "157", "status": "Partial"}',
    ],
)
def test_numbers_as_strings_or_json_numbers(body: str) -> None:
    report = parsing.parse_status(body)
    expected = OrderReport(OrderStatus.PARTIAL, "Partial", Decimal("0.27819"), 3572, 157, None)
    assert report == expected


@pytest.mark.parametrize("blank", ['""', "null", '"  "'])
def test_blank_numbers_are_none(blank: str) -> None:
    body = f'{{"charge": {blank}, "start_count": {blank}, "remains": {blank}, "status": "Pending"}}'
    report = parsing.parse_status(body)
    assert isinstance(report, OrderReport)
    assert (report.charge, report.start_count, report.remains) == (None, None, None)


def test_missing_numbers_are_none() -> None:
    assert parsing.parse_status('{"status": "Pending"}') == OrderReport(
        OrderStatus.PENDING, "Pending", None, None, None, None
    )


@pytest.mark.parametrize(
    ("literal", "digits"),
    [("0.1", "0.1"), ("0.27819", "0.27819"), ("1.10", "1.10"), ("0.00000001", "1E-8"),
     ("100.84292", "100.84292"), ("3", "3")],
)
def test_json_numbers_become_exact_decimals(literal: str, digits: str) -> None:
    balance = parsing.parse_balance(f'{{"balance": {literal}, "currency": "USD"}}')
    assert str(balance.amount) == digits
    assert balance.amount == Decimal(literal)


@pytest.mark.parametrize("remains", ['"-2"', "-5", '"-0"'])
def test_negative_remains_is_kept(remains: str) -> None:
    report = parsing.parse_status(f'{{"status": "Completed", "remains": {remains}}}')
    assert isinstance(report, OrderReport)
    assert report.remains == int(json.loads(remains))


def test_missing_currency_is_none() -> None:
    report = parsing.parse_status('{"status": "Completed", "charge": "1"}')
    assert isinstance(report, OrderReport) and report.currency is None
    assert parsing.parse_balance('{"balance": "5"}') == Balance(Decimal("5"), None)


@pytest.mark.parametrize("charge", ['"abc"', '"1,234.5"', "true", "[1]", '"Infinity"', '"0x10"'])
def test_unreadable_number_in_single_status_is_unexpected_shape(charge: str) -> None:
    with pytest.raises(UnexpectedShape):
        parsing.parse_status(f'{{"status": "Completed", "charge": {charge}}}')


def test_non_finite_json_number_is_not_json() -> None:
    with pytest.raises(NotJSON):
        parsing.parse_status('{"status": "Completed", "charge": NaN}')


def test_unreadable_entry_in_a_batch_spoils_only_that_id() -> None:
    body = '{"1": {"status": "Completed", "remains": "N/A"}, "2": {"status": "Pending"}, "3": 7}'
    result = parsing.parse_status_multi(body)
    assert result[2] == OrderReport(OrderStatus.PENDING, "Pending", None, None, None, None)
    for order_id in (1, 3):
        entry = result[order_id]
        assert isinstance(entry, ItemError)
        assert entry.message.startswith("unreadable answer")
        assert not entry.means_not_found


# --- statuses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("In progress", OrderStatus.IN_PROGRESS),
        ("In Progress", OrderStatus.IN_PROGRESS),
        ("inprogress", OrderStatus.IN_PROGRESS),
        ("in_progress", OrderStatus.IN_PROGRESS),
        ("Canceled", OrderStatus.CANCELED),
        ("Cancelled", OrderStatus.CANCELED),
        ("Complete", OrderStatus.COMPLETED),
        ("Completed", OrderStatus.COMPLETED),
        ("Refunded", OrderStatus.CANCELED),
        ("Something new", OrderStatus.UNKNOWN),
    ],
)
def test_status_spellings_normalised_and_raw_kept(raw: str, expected: OrderStatus) -> None:
    multi = parsing.parse_status_multi(json.dumps({"5": {"status": raw}}))
    assert multi == {5: OrderReport(expected, raw, None, None, None, None)}


def test_status_that_says_not_found_is_an_item_error() -> None:
    assert parsing.parse_status('{"status": "Order not found"}') == ItemError("Order not found")


# --- IDs -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", ['{"refill": "1"}', '{"refill": 1}', '{"refill": " 1 "}'])
def test_refill_id_as_string_or_number(body: str) -> None:
    assert parsing.parse_refill(body) == "1"


@pytest.mark.parametrize(
    "refill_id",
    ["x" * 65, "12,13", "12 13", "refill\u00e9", "a/b", "<b>Notice</b>"],
)
def test_a_refill_id_that_cannot_be_stored_or_polled_is_unusable(refill_id: str) -> None:
    with pytest.raises(UnusableRefillId) as caught:
        parsing.parse_refill(json.dumps({"refill": refill_id}))
    assert "unusable refill ID" in str(caught.value)


def test_a_long_unusable_refill_id_shows_no_part_of_a_key() -> None:
    """The error names an unusable ID shortened: a key in it must not be cut before it is
    masked (the first characters of the key would show)."""
    for lead in range(40, 130, 7):
        refill_id = "x" * lead + KEY + "y" * 40
        for body in (json.dumps({"refill": refill_id}), json.dumps([{"order": 7, "refill": refill_id}])):
            parse = parsing.parse_refill if body.startswith("{") else parsing.parse_refill_multi
            try:
                result = parse(body, secrets=[KEY])
            except UnusableRefillId as caught:
                shown = _everything_about(caught)
            else:
                shown = str(result)
            assert "unusable refill ID" in shown
            assert not any(KEY[:size] in shown for size in range(4, len(KEY))), (lead, shown)


def test_the_longest_usable_refill_id_is_kept() -> None:
    assert parsing.parse_refill(json.dumps({"refill": "R-" + "9" * 62})) == "R-" + "9" * 62


def test_refill_ids_in_batches_are_strings() -> None:
    assert parsing.parse_refill_multi('[{"order": "7", "refill": 70}]') == {7: "70"}
    assert parsing.parse_refill_status_multi('[{"refill": 70, "status": "Pending"}]') == {
        "70": RefillReport(RefillStatus.PENDING, "Pending")
    }


@pytest.mark.parametrize("bad_id", ['"abc"', '"0"', '"-1"', '"1.5"', '""', "0", "-3", "true"])
def test_order_ids_that_are_not_positive_integers(bad_id: str) -> None:
    as_key = json.loads(bad_id) if bad_id.startswith('"') else bad_id
    with pytest.raises(UnexpectedShape):
        parsing.parse_status_multi(json.dumps({str(as_key): {"status": "Pending"}}))
    with pytest.raises(UnexpectedShape):
        parsing.parse_refill_multi(f'[{{"order": {bad_id}, "refill": 1}}]')
    with pytest.raises(UnexpectedShape):
        parsing.parse_cancel(f'[{{"order": {bad_id}, "cancel": 1}}]')


@pytest.mark.parametrize("body", ['{"order": 0}', '{"order": "x"}', "{}", "[]", '{"order": null}'])
def test_add_without_a_valid_order_id(body: str) -> None:
    with pytest.raises(UnexpectedShape):
        parsing.parse_add(body)


@pytest.mark.parametrize(
    "body",
    ['{"order": 23501}', '{"order": "23501"}', '{"order": 23501, "error": null}',
     '{"order": 23501, "error": ""}'],
)
def test_add_accepts_string_ids_and_a_null_error(body: str) -> None:
    assert parsing.parse_add(body) == 23501


# --- shapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    ['{"status": "Completed"}', '{"refill": "Completed"}', '{"status": "completed", "refill": 4}'],
)
def test_refill_status_as_status_or_refill_field(body: str) -> None:
    result = parsing.parse_refill_status(body)
    assert isinstance(result, RefillReport)
    assert result.status is RefillStatus.COMPLETED


def test_multi_status_answered_as_a_list() -> None:
    body = (
        '[{"order": 1, "status": "Partial", "remains": 3},'
        ' {"order": "2", "error": "Incorrect order ID"}]'
    )
    assert parsing.parse_status_multi(body) == {
        1: OrderReport(OrderStatus.PARTIAL, "Partial", None, None, 3, None),
        2: ItemError("Incorrect order ID"),
    }


def test_multi_refill_status_answered_as_an_object() -> None:
    body = '{"11": {"status": "Completed"}, "12": "Rejected", "13": {"error": "Refill not found"}}'
    assert parsing.parse_refill_status_multi(body) == {
        "11": COMPLETED, "12": REJECTED, "13": ItemError("Refill not found")
    }


def test_multi_refill_and_cancel_answered_as_objects() -> None:
    assert parsing.parse_refill_multi('{"5": 55, "6": {"error": "Refill is disabled"}}') == {
        5: "55", 6: ItemError("Refill is disabled")
    }
    assert parsing.parse_cancel('{"5": 1, "6": {"error": "Incorrect order ID"}}') == {
        5: CancelAccepted("1"), 6: ItemError("Incorrect order ID")
    }


@pytest.mark.parametrize("body", ["{}", "[]"])
def test_empty_batches(body: str) -> None:
    assert parsing.parse_status_multi(body) == {}
    assert parsing.parse_refill_status_multi(body) == {}


@pytest.mark.parametrize(
    ("body", "parse", "key", "message"),
    [
        ('{"10": {"error": "Incorrect order ID"}}', parsing.parse_status_multi, 10,
         "Incorrect order ID"),
        ('[{"refill": 3, "status": {"error": "Refill not found"}}]',
         parsing.parse_refill_status_multi, "3", "Refill not found"),
        ('[{"order": 3, "refill": {"error": "Refill is disabled"}}]', parsing.parse_refill_multi, 3,
         "Refill is disabled"),
        ('[{"order": 9, "cancel": {"error": "Incorrect order ID"}}]', parsing.parse_cancel, 9,
         "Incorrect order ID"),
        ('[{"order": 9, "error": "Order not found"}]', parsing.parse_cancel, 9, "Order not found"),
    ],
)
def test_errors_nested_in_batch_entries(
    body: str, parse: Callable[[str], dict[object, object]], key: object, message: str
) -> None:
    assert parse(body) == {key: ItemError(message)}


@pytest.mark.parametrize(
    ("cancel", "expected"),
    [("1", CancelAccepted("1")), ("true", CancelAccepted("true")),
     ('"ok"', CancelAccepted("ok")), ("false", ItemError("cancel not accepted: false")),
     ("0", ItemError("cancel not accepted: 0"))],
)
def test_cancel_values(cancel: str, expected: object) -> None:
    assert parsing.parse_cancel(f'[{{"order": 4, "cancel": {cancel}}}]') == {4: expected}


def test_services_with_and_without_desc_and_cancel() -> None:
    body = json.dumps([
        {"service": "7", "name": "A", "rate": 1.5, "min": 10, "max": "100", "refill": "1",
         "cancel": "0", "description": "long text"},
        {"service": 8, "name": "B", "rate": "2", "min": "1", "max": 5, "refill": False},
        {"service": 9, "name": "C", "type": "Default", "category": "X", "rate": "0.5",
         "min": "1", "max": "2", "dripfeed": True, "desc": "short", "cancel": True},
    ])
    assert parsing.parse_services(body) == [
        CatalogService(7, "A", None, None, Decimal("1.5"), 10, 100, True, False, "long text"),
        CatalogService(8, "B", None, None, Decimal("2"), 1, 5, False, None, None),
        CatalogService(9, "C", "Default", "X", Decimal("0.5"), 1, 2, False, True, "short"),
    ]


def test_services_keyed_by_id_and_a_missing_refill_flag() -> None:
    body = '{"3": {"service": 3, "name": "A", "rate": "1", "min": "1", "max": "2"}}'
    [service] = parsing.parse_services(body)
    assert (service.service_id, service.refill, service.cancel) == (3, False, None)


@pytest.mark.parametrize(
    "body",
    ['[{"name": "no id"}]', '[{"service": 1, "refill": "maybe"}]', "[1, 2]", '"services"'],
)
def test_unreadable_services(body: str) -> None:
    with pytest.raises(UnexpectedShape):
        parsing.parse_services(body)


@pytest.mark.parametrize(
    ("parse", "body"),
    [
        (parsing.parse_status, "[]"),
        (parsing.parse_status, '{"charge": "1"}'),
        (parsing.parse_status_multi, '"x"'),
        (parsing.parse_status_multi, "[1, 2]"),
        (parsing.parse_refill, '{"refill": true}'),
        (parsing.parse_refill, '{"refill": null}'),
        (parsing.parse_refill_status, '{"status": 5}'),
        (parsing.parse_balance, '{"currency": "USD"}'),
        (parsing.parse_balance, '{"balance": "lots"}'),
        (parsing.parse_cancel, "5"),
    ],
)
def test_wrong_shapes(parse: Callable[[str], object], body: str) -> None:
    with pytest.raises(UnexpectedShape):
        parse(body)


# --- not JSON ------------------------------------------------------------------------

PHP_FATAL = (
    "<br />\n<b>Fatal error</b>:  Uncaught Error: Call to a member function get() on null in"
    " /var/www/api.php:12\nStack trace:\n#0 {main}\n  thrown in <b>/var/www/api.php</b>"
    " on line <b>12</b><br />\n" + '{"charge": "1", "status": "Completed"}'
)
CLOUDFLARE = (
    "<!DOCTYPE html>\n<html><head><title>Just a moment...</title></head>"
    "<body>Checking your browser before accessing. Cloudflare Ray ID: 7d1a</body></html>"
)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (PHP_FATAL, "PHP fatal error"),
        ("Fatal error: Allowed memory size exhausted in /srv/api.php on line 4\n{}", "PHP fatal error"),
        ("<br />\n<b>Warning</b>:  Oops in <b>/srv/api.php</b> on line <b>4</b><br />\n", "no complete JSON"),
        (CLOUDFLARE, "HTML"),
        ("<html><body>502 Bad Gateway</body></html>", "HTML"),
        ('{"charge": "0.27819", "status": "Parti', "invalid JSON"),
        ('{"1": {"status": "Partial"}', "invalid JSON"),
        ("", "empty body"),
        ("  \n ", "empty body"),
        ("NaN", "invalid JSON"),
        ('{"a": 1} {"b": 2}', "invalid JSON"),
    ],
)
def test_not_json(body: str, reason: str) -> None:
    for parse in (parsing.parse_status, parsing.parse_status_multi, parsing.parse_balance):
        with pytest.raises(NotJSON) as caught:
            parse(body)
        assert reason in caught.value.reason


# --- PHP diagnostics around the JSON (panels left in debug mode) ---------------------
#
# PHP carries on after a deprecation, notice or warning, so the JSON that follows is what
# the panel sends in production; a fatal error stops the script. The renderings below are
# PHP 8.2's own (captured with `php -n -S`, paths shortened), CodeIgniter 3's error view,
# Xdebug's table and a Laravel/Whoops block.

STATUS_JSON = (
    '{"charge": "0.27819", "start_count": "3572", "status": "Partial", "remains": "157",'
    ' "currency": "USD"}'
)
RAW_DEPRECATED = (
    "<br />\n<b>Deprecated</b>:  Creation of dynamic property Api::$db is deprecated in "
    "<b>/var/www/panel/app/Api.php</b> on line <b>12</b><br />\n"
)
RAW_NOTICE = (
    "<br />\n<b>Notice</b>:  Undefined index: currency in <b>/var/www/panel/api/v2.php</b>"
    " on line <b>88</b><br />\n"
)
RAW_WARNING = (
    "<br />\n<b>Warning</b>:  Cannot modify header information - headers already sent by (output"
    " started at /var/www/panel/system/core/Exceptions.php:272) in <b>/var/www/panel/system/core/"
    "Output.php</b> on line <b>471</b><br />\n"
)
RAW_SESSION_WARNINGS = (
    "<br />\n<b>Warning</b>:  ini_set(): Session ini settings cannot be changed after headers have"
    " already been sent in <b>/var/www/panel/system/libraries/Session/Session.php</b> on line"
    " <b>284</b><br />\n"
    "<br />\n<b>Warning</b>:  session_start(): Session cannot be started after headers have already"
    " been sent in <b>/var/www/panel/system/libraries/Session/Session.php</b> on line <b>143</b><br />\n"
)
RAW_STRICT = (
    "<br />\n<b>Strict Standards</b>:  Non-static method Api::db() should not be called statically"
    " in <b>/var/www/panel/api.php</b> on line <b>5</b><br />\n"
)
PLAIN_PHP_DEPRECATED = (
    "PHP Deprecated:  strlen(): Passing null to parameter #1 ($string) of type string is "
    "deprecated in /var/www/panel/api.php on line 31\n"
)
PLAIN_DEPRECATED = "\nDeprecated: Function utf8_encode() is deprecated in /var/www/panel/api.php on line 40\n"
PLAIN_NOTICE = "Notice: Undefined offset: 1 in /var/www/panel/api.php on line 7\n"
PLAIN_WARNING = (
    "\nWarning: Cannot modify header information - headers already sent by (output started at"
    " /var/www/panel/api.php:3) in /var/www/panel/api.php on line 9\n"
)
PLAIN_PHP_WARNING = "PHP Warning:  Undefined variable $x in /var/www/api.php on line 2\n"


def codeigniter(severity: str) -> str:
    """CodeIgniter 3's error_php.php view, as the sim serves it."""
    return codeigniter_error_block(severity).decode()


def xdebug(kind: str, title: str) -> str:
    """Xdebug 3's HTML error table (develop mode, html_errors on)."""
    return (
        "<br />\n<font size='1'><table class='xdebug-error xe-" + kind + "' dir='ltr' border='1'"
        " cellspacing='0' cellpadding='1'>\n<tr><th align='left' bgcolor='#f57900' colspan=\"5\">"
        "<span style='background-color: #cc0000; color: #fce94f; font-size: x-large;'>( ! )</span> "
        + title + " in /var/www/panel/api.php on line <i>4</i></th></tr>\n"
        "<tr><th align='left' bgcolor='#e9b96e' colspan='5'>Call Stack</th></tr>\n"
        "<tr><td bgcolor='#eeeeec' align='center'>1</td><td bgcolor='#eeeeec' align='center'>0.0002"
        "</td><td bgcolor='#eeeeec' align='right'>393440</td><td bgcolor='#eeeeec'>{main}(  )</td>"
        "<td title='/var/www/panel/api.php' bgcolor='#eeeeec'>.../api.php<b>:</b>0</td></tr>\n"
        "</table></font>\n"
    )


def laravel(title: str) -> str:
    """A Whoops/Ignition-style fragment for a PHP error turned into ErrorException."""
    return (
        '<div class="exception-summary">\n'
        '  <div class="exc-title">\n'
        '    <span class="exc-title-primary">ErrorException</span>\n'
        '    <span class="exc-title-secondary">(E_DEPRECATED)</span>\n'
        "  </div>\n"
        f'  <div class="exc-message"><span>{title}</span></div>\n'
        '  <div class="frame">vendor/laravel/framework/src/Illuminate/Foundation/Bootstrap/'
        "HandleExceptions.php:255</div>\n"
        "</div>\n"
    )


LARAVEL_DEPRECATION = laravel(
    "Deprecated: Return type of App\\Support\\Bag::offsetGet($key) should either be "
    "compatible with ArrayAccess::offsetGet(mixed $offset): mixed"
)

# Noise before the JSON, and the worst severity salvaged from it.
SALVAGEABLE: dict[str, tuple[str, str]] = {
    "raw deprecated": (RAW_DEPRECATED, "deprecated"),
    "raw notice": (RAW_NOTICE, "notice"),
    "raw deprecated then notice": (RAW_DEPRECATED + RAW_NOTICE, "notice"),
    "raw warning": (RAW_WARNING, "warning"),
    "raw deprecation, then header and session warnings": (
        RAW_DEPRECATED + RAW_SESSION_WARNINGS + RAW_WARNING, "warning"),
    "raw strict standards": (RAW_STRICT, "notice"),
    "plain PHP Deprecated": (PLAIN_PHP_DEPRECATED, "deprecated"),
    "plain Deprecated": (PLAIN_DEPRECATED, "deprecated"),
    "plain Notice": (PLAIN_NOTICE, "notice"),
    "plain Warning": (PLAIN_WARNING, "warning"),
    "plain PHP Warning": (PLAIN_PHP_WARNING, "warning"),
    "codeigniter Notice": (codeigniter("Notice"), "notice"),
    "codeigniter Deprecated": (codeigniter("Deprecated"), "deprecated"),
    "codeigniter 8192": (codeigniter("8192"), "deprecated"),
    "codeigniter 16384": (codeigniter("16384"), "deprecated"),
    "codeigniter 8": (codeigniter("8"), "notice"),
    "codeigniter 2048": (codeigniter("2048"), "notice"),
    "codeigniter Runtime Notice": (codeigniter("Runtime Notice"), "notice"),
    "codeigniter User Notice": (codeigniter("User Notice"), "notice"),
    "codeigniter Warning": (codeigniter("Warning"), "warning"),
    "codeigniter 2 (E_WARNING)": (codeigniter("2"), "warning"),
    "codeigniter User Warning": (codeigniter("User Warning"), "warning"),
    "codeigniter Core Warning": (codeigniter("Core Warning"), "warning"),
    "codeigniter Compile Warning": (codeigniter("Compile Warning"), "warning"),
    "codeigniter twice": (codeigniter("8192") + "\n" + codeigniter("Notice"), "notice"),
    "codeigniter deprecation then warnings": (
        codeigniter("8192") + "\n" + codeigniter("Warning") + "\n" + codeigniter("Warning"), "warning"),
    "xdebug deprecated": (xdebug("deprecated", "Deprecated: Creation of dynamic property"), "deprecated"),
    "xdebug notice": (xdebug("notice", "Notice: Undefined index: x"), "notice"),
    "xdebug strict standards": (xdebug("strict-standards", "Strict standards: x"), "notice"),
    "xdebug warning": (xdebug("warning", "Warning: session_start(): Session cannot be started"), "warning"),
    "laravel deprecation": (LARAVEL_DEPRECATION, "deprecated"),
    "all of them": (
        RAW_NOTICE + PLAIN_DEPRECATED + codeigniter("8") + LARAVEL_DEPRECATION
        + xdebug("warning", "Warning: x") + PLAIN_PHP_WARNING, "warning"),
}


@pytest.mark.parametrize(("noise", "severity"), SALVAGEABLE.values(), ids=SALVAGEABLE.keys())
def test_json_after_non_fatal_php_diagnostics_is_salvaged(noise: str, severity: str) -> None:
    body = noise + STATUS_JSON + "\n"
    assert parsing.parse_status(body) == partial_usd()
    salvaged = parsing.strip_php_notices(body)
    assert salvaged.noisy and json.loads(salvaged.text) == json.loads(STATUS_JSON)
    assert salvaged.severity == severity and salvaged.refusal is None
    batch = noise + '{"7": ' + STATUS_JSON + ', "8": {"error": "Incorrect order ID"}}'
    assert parsing.parse_status_multi(batch) == {7: partial_usd(), 8: ItemError("Incorrect order ID")}
    assert parsing.parse_services(noise + seed("000_services.json")) == panel_services(True, None)
    assert parsing.parse_services("\ufeff" + noise + "[]") == []


# Non-fatal diagnostics after the one JSON document: a destructor, a shutdown function.
TRAILING: dict[str, tuple[str, str]] = {
    "raw warning": ("<br />\n<b>Warning</b>:  Cannot modify header information - headers already sent"
                    " in <b>/var/www/api.php</b> on line <b>9</b><br />\n", "warning"),
    "raw notice, no newline": (RAW_NOTICE.rstrip("\n"), "notice"),
    "plain warning": (PLAIN_WARNING.lstrip("\n"), "warning"),
    "codeigniter warning": ("\n" + codeigniter("Warning"), "warning"),
    "xdebug deprecated": (xdebug("deprecated", "Deprecated: x"), "deprecated"),
    "two of them": (RAW_NOTICE + PLAIN_DEPRECATED, "notice"),
}


@pytest.mark.parametrize(("tail", "severity"), TRAILING.values(), ids=TRAILING.keys())
def test_non_fatal_diagnostics_after_the_json_are_salvaged(tail: str, severity: str) -> None:
    for head, worst in (("", severity), (RAW_DEPRECATED, severity), (RAW_WARNING, "warning")):
        body = head + STATUS_JSON + tail
        assert parsing.parse_status(body) == partial_usd()
        salvaged = parsing.strip_php_notices(body)
        assert salvaged.severity == worst and json.loads(salvaged.text) == json.loads(STATUS_JSON)


def test_a_clean_body_is_not_noisy() -> None:
    for body in (STATUS_JSON, " \ufeff" + STATUS_JSON, "[]", "<html></html>", "", '{"a": 1} x'):
        salvaged = parsing.strip_php_notices(body)
        assert not salvaged.noisy and salvaged.text == body
        assert salvaged.severity is None and salvaged.refusal is None


RAW_FATAL_UNCAUGHT = (
    "<br />\n<b>Fatal error</b>:  Uncaught RuntimeException: SMTP &lt;down&gt; for key=abc in"
    " /var/www/panel/api.php:8\nStack trace:\n#0 {main}\n  thrown in <b>/var/www/panel/api.php</b>"
    " on line <b>8</b><br />\n"
)
PLAIN_FATAL_UNCAUGHT = (
    "Fatal error: Uncaught RuntimeException: SMTP <down> for key=abc in /var/www/panel/api.php:8\n"
    "Stack trace:\n#0 {main}\n  thrown in /var/www/panel/api.php on line 8\n"
)
CODEIGNITER_EXCEPTION = (
    '<div style="border:1px solid #990000;padding-left:20px;margin:0 0 10px 0;">\n\n'
    "<h4>An uncaught Exception was encountered</h4>\n\n<p>Type: RuntimeException</p>\n"
    "<p>Message: SMTP down</p>\n<p>Filename: /var/www/panel/application/libraries/Mailer.php</p>\n"
    "<p>Line Number: 40</p>\n</div>"
)

# Anything that refuses the body: a fatal error before or after the JSON, anything else
# around it, no complete JSON document. With a word the refusal's block must contain.
NOT_SALVAGEABLE: dict[str, tuple[str, str]] = {
    "raw fatal": ("<br />\n<b>Fatal error</b>:  Database is gone in <b>/var/www/api.php</b> on line"
                  " <b>5</b><br />\n", "Database is gone"),
    "raw uncaught": (RAW_FATAL_UNCAUGHT, "Uncaught RuntimeException"),
    "raw parse error": ("<br />\n<b>Parse error</b>:  syntax error, unexpected token &quot;;&quot; in"
                        " <b>/var/www/api.php</b> on line <b>9</b><br />\n", "syntax error"),
    "raw recoverable fatal": ("<br />\n<b>Recoverable fatal error</b>:  Object could not be converted"
                              " in <b>/var/www/api.php</b> on line <b>3</b><br />\n", "could not be converted"),
    "raw notice then fatal": (RAW_NOTICE + RAW_FATAL_UNCAUGHT, "Uncaught RuntimeException"),
    "plain fatal": ("PHP Fatal error:  Oops in /var/www/api.php on line 3\n", "Oops"),
    "plain uncaught": (PLAIN_FATAL_UNCAUGHT, "Uncaught RuntimeException"),
    "plain notice then parse error": (
        PLAIN_NOTICE + "Parse error: syntax error in /var/www/api.php on line 3\n", "syntax error"),
    "codeigniter Error": (codeigniter("Error"), "Severity: Error"),
    "codeigniter Parsing Error": (codeigniter("Parsing Error"), "Parsing Error"),
    "codeigniter Core Error": (codeigniter("Core Error"), "Core Error"),
    "codeigniter Compile Error": (codeigniter("Compile Error"), "Compile Error"),
    "codeigniter User Error": (codeigniter("User Error"), "User Error"),
    "codeigniter 4096": (codeigniter("4096"), "Severity: 4096"),
    "codeigniter 1": (codeigniter("1"), "Severity: 1"),
    "codeigniter unknown level": (codeigniter("32768"), "Severity: 32768"),
    "codeigniter warning then uncaught exception": (
        codeigniter("Warning") + CODEIGNITER_EXCEPTION, "An uncaught Exception"),
    "xdebug fatal": (xdebug("fatal-error", "Fatal error: Allowed memory size exhausted"), "Allowed memory"),
    "xdebug uncaught": (xdebug("uncaught-exception", "Fatal error: Uncaught Error: Call to undefined"),
                        "Uncaught Error"),
    "xdebug parse error": (xdebug("parse-error", "Parse error: syntax error"), "syntax error"),
    "laravel warning": (laravel("Warning: Undefined array key 1").replace("E_DEPRECATED", "E_WARNING"),
                        "Undefined array key"),
    "laravel other exception": (LARAVEL_DEPRECATION.replace("ErrorException", "QueryException"), "QueryException"),
    "unrecognised html": ("<div>Deprecated: see the maintenance notice</div>\n", ""),
    "notice without its file and line": ("Notice: the API moves soon\n", ""),
    "text between notice and json": (RAW_NOTICE + "debug: ok\n", "debug: ok"),
    "text between warning and json": (RAW_WARNING + "<pre>array(0) {}</pre>", "array(0)"),
}


@pytest.mark.parametrize(("noise", "block"), NOT_SALVAGEABLE.values(), ids=NOT_SALVAGEABLE.keys())
def test_fatal_errors_and_unknown_noise_stay_failures(noise: str, block: str) -> None:
    body = noise + STATUS_JSON
    assert not parsing.strip_php_notices(body).noisy
    for parse in (parsing.parse_status, parsing.parse_status_multi, parsing.parse_balance):
        with pytest.raises(NotJSON) as caught:
            parse(body)
        assert block in caught.value.message


@pytest.mark.parametrize(
    ("tail", "block"),
    [
        (RAW_FATAL_UNCAUGHT, "Uncaught RuntimeException"),  # the script died after its JSON
        (PLAIN_FATAL_UNCAUGHT, "Uncaught RuntimeException"),
        ("\n" + codeigniter("Warning") + CODEIGNITER_EXCEPTION, "An uncaught Exception"),
        (RAW_NOTICE + " trailing", "trailing"),
        (RAW_NOTICE + STATUS_JSON, "Partial"),  # a second document
        ('{"b": 2}', ""),
        ("<br />", ""),
    ],
)
def test_a_fatal_error_or_anything_else_after_the_json_refuses_it(tail: str, block: str) -> None:
    for head in ("", RAW_DEPRECATED):
        with pytest.raises(NotJSON) as caught:
            parsing.parse_status(head + STATUS_JSON + tail)
        assert block in caught.value.message


@pytest.mark.parametrize(
    "tail",
    [
        STATUS_JSON + " trailing",
        '"just a string"',
        "157",
        STATUS_JSON[:-1],  # cut short
        "",  # no JSON at all
        "[[[[" * 300,
    ],
)
def test_salvage_wants_one_complete_json_document(tail: str) -> None:
    for head in (RAW_NOTICE, RAW_WARNING, codeigniter("Warning")):
        with pytest.raises(NotJSON):
            parsing.parse_status(head + tail)
        assert not parsing.strip_php_notices(head + tail).noisy


def test_the_refusal_names_the_block_that_decided_not_the_first() -> None:
    """A deprecation, a warning, the JSON, then the fatal error that stopped the script:
    the error names the fatal block, key-free, and the body's start as before."""
    body = RAW_DEPRECATED + RAW_WARNING + STATUS_JSON + RAW_FATAL_UNCAUGHT.replace("abc", KEY)
    with pytest.raises(NotJSON) as caught:
        parsing.parse_status(body, secrets=[KEY])
    error = caught.value
    assert "fatal" in error.reason
    assert error.block.startswith("Fatal error: Uncaught RuntimeException: SMTP <down> for key=***")
    assert "Deprecated" not in error.block and "Cannot modify header" not in error.block
    assert error.excerpt.startswith("<br /> <b>Deprecated</b>")
    assert KEY not in str(error) and KEY not in repr(vars(error))
    refused = parsing.strip_php_notices(body, secrets=[KEY])
    assert refused.refusal is not None and refused.block == error.block and refused.text == body


def test_a_salvaged_body_names_its_worst_block() -> None:
    body = RAW_DEPRECATED + RAW_NOTICE + RAW_WARNING + RAW_WARNING + STATUS_JSON + RAW_NOTICE
    salvaged = parsing.strip_php_notices(body)
    assert (salvaged.severity, salvaged.diagnostics) == ("warning", 5)
    assert salvaged.block.startswith("Warning: Cannot modify header information")


def test_every_excerpt_of_a_block_is_key_free() -> None:
    body = codeigniter("Warning").replace("Undefined index: currency", f"bad key {KEY}") + STATUS_JSON
    salvaged = parsing.strip_php_notices(body, secrets=[KEY])
    assert salvaged.severity == "warning" and KEY not in salvaged.block and "bad key ***" in salvaged.block


# Every rendering whose excerpt may be cut short, with MESSAGE where the message goes:
# the excerpt reads a block only so far, and a key that the cut goes through must not
# show its first characters. (rendering, where it goes, severity or None when the body is
# refused, how many of its characters come before the block that decides). "after": after
# a deprecation and the JSON.
_M = "\x00MESSAGE\x00"
CUT_RENDERINGS: dict[str, tuple[str, str, str | None, int]] = {
    "html warning": (f"<br />\n<b>Warning</b>:  {_M} in <b>/var/www/api.php</b> on line <b>9</b><br />\n",
                     "before", "warning", 0),
    "html fatal": (f"<br />\n<b>Fatal error</b>:  Uncaught {_M} in <b>/var/www/api.php</b> on line <b>8</b>"
                   "<br />\n", "before", None, 0),
    "html fatal, no tail": (f"<br />\n<b>Fatal error</b>:  Uncaught <i>x</i> {_M}\n#0 {{main}}\n", "before", None, 0),
    "plain warning": (f"Warning: {_M} in /var/www/api.php on line 9\n", "before", "warning", 0),
    "plain fatal": (f"PHP Fatal error:  Uncaught {_M} in /var/www/api.php:8\nStack trace:\n#0 {{main}}\n",
                    "before", None, 0),
    "codeigniter warning": (codeigniter("Warning").replace("Undefined index: currency", _M), "before", "warning", 0),
    "codeigniter exception": (CODEIGNITER_EXCEPTION.replace("SMTP down", _M), "before", None, 0),
    "xdebug warning": (xdebug("warning", f"Warning: {_M}"), "before", "warning", 0),
    "xdebug fatal": (xdebug("fatal-error", f"Fatal error: {_M}"), "before", None, 0),
    "laravel deprecation": (laravel(f"Deprecated: {_M}"), "before", "deprecated", 0),
    "laravel other exception": (laravel(_M).replace("ErrorException", "QueryException"), "before", None, 0),
    "text after the json": (f"\ndebug: {_M}\n", "after", None, 0),
    "text between a notice and the json": (RAW_NOTICE + f"debug: {_M}\n", "before", None, len(RAW_NOTICE)),
}


def _key_shown_in_part(text: str) -> str | None:
    """The longest start or end of KEY (4 characters or more) that ``text`` shows."""
    folded = text.lower()
    for size in range(len(KEY), 3, -1):
        for part in (KEY[:size], KEY[-size:]):
            if part.lower() in folded:
                return part
    return None


@pytest.mark.parametrize(
    ("rendering", "place", "severity", "skip"), CUT_RENDERINGS.values(), ids=CUT_RENDERINGS.keys()
)
def test_a_key_where_the_excerpt_is_cut_shows_none_of_its_characters(
    rendering: str, place: str, severity: str | None, skip: int
) -> None:
    """The key at every place around where the block's excerpt is cut, after fillers that
    shrink when the block is made readable (tags, runs of spaces), as real error pages have
    them: the excerpt shows the key masked whole, or nothing of it."""
    before_it = RAW_DEPRECATED + STATUS_JSON if place == "after" else ""
    rendering_at = len(before_it)
    decisive = rendering[skip:]
    block_start = rendering_at + skip + len(decisive) - len(decisive.lstrip())
    for filler in (" ", "<span></span>"):
        for key_at in range(1940, 2080, 3):
            lead = key_at + block_start - rendering_at - rendering.index(_M)
            message = filler * (lead // len(filler)) + "z" * (lead % len(filler)) + KEY + " and more"
            block = rendering.replace(_M, message)
            if filler != " " and severity is not None and "<b>Warning</b>" in block:
                continue  # PHP escapes the message: no tag in a warning's own line
            body = block + STATUS_JSON if place == "before" else before_it + block
            assert body.index(KEY) - block_start == key_at
            salvaged = parsing.strip_php_notices(body, secrets=[KEY])
            assert (salvaged.severity, salvaged.refusal is None) == (severity, severity is not None), key_at
            assert _key_shown_in_part(salvaged.block) is None, (key_at, salvaged.block)
            if severity is None:
                with pytest.raises(NotJSON) as caught:
                    parsing.parse_status(body, secrets=[KEY])
                assert _key_shown_in_part(_everything_about(caught.value)) is None, key_at


def test_the_reviewers_fatal_block_shows_no_part_of_the_key() -> None:
    """A fatal HTML block full of tags with the key across character 2,000 once gave the
    excerpt 'Fatal error: Uncaught zzzzzabcde'."""
    key = "abcdefghij0123456789abcdefghij01"
    head = "<br />\n<b>Fatal error</b>:  Uncaught "
    block = head + "<i></i>" * ((1995 - len(head)) // 7)
    block += "z" * (1995 - len(block)) + key + " in <b>/var/www/api.php</b> on line <b>3</b><br />\n"
    salvaged = parsing.strip_php_notices(block + "{}", secrets=[key])
    assert salvaged.refusal is not None and salvaged.block.startswith("Fatal error: Uncaught zzzzz")
    assert "abcd" not in salvaged.block


def whoops(code: str, message: str) -> str:
    """Whoops' header (its views/header.html.php, search links left out): the exception's
    class, its severity as PrettyPageHandler names it (``Misc::translateErrorCode``), the
    message as Laravel's HandleExceptions throws it (no level in it), the plain copy."""
    code_span = f'      <span title="Exception Code">({code})</span>\n' if code else ""
    return (
        '<div class="exception">\n  <div class="exc-title">\n'
        '        <span class="exc-title-primary">ErrorException</span>\n'
        f"{code_span}  </div>\n\n"
        '  <div class="exc-message">\n'
        f"      <span>{html_escape(message)}</span>\n"
        f'    <span id="plain-exception">ErrorException thrown with message &quot;{html_escape(message)}&quot;\n\n'
        "Stacktrace:\n#1 Illuminate\\Foundation\\Bootstrap\\HandleExceptions:handleError in "
        "/var/www/panel/app/Http/Controllers/ApiController.php:41\n</span>\n"
        "  </div>\n</div>\n"
    )


@pytest.mark.parametrize(
    "block",
    [
        # The reviewer's: PHP 8's warning for a missing key, which Laravel throws.
        whoops("", 'Undefined array key "deprecated"'),
        '<div class="exc-message">ErrorException: Undefined array key &quot;deprecated&quot;</div>\n',
        whoops("", "Undefined index: notice"),
        whoops("", "Deprecated: mb_strlen(): Passing null to parameter #1"),  # no level field
        whoops("E_WARNING", 'Undefined array key "deprecated"'),
        whoops("E_USER_WARNING", "Notice: the cache is deprecated"),
        whoops("E_DEPRECATED", "Warning: Undefined array key 1"),  # the two disagree
        whoops("E_UNKNOWN", "Deprecated: x"),
        laravel('Undefined array key "deprecated"').replace("(E_DEPRECATED)", ""),
        laravel('Undefined array key "x"').replace("(E_DEPRECATED)", "(E_WARNING)").replace(
            "HandleExceptions.php:255", "E_DEPRECATED"),
    ],
    ids=[
        "reviewer's example, Whoops header", "reviewer's example, one line", "a notice's message",
        "a deprecation's message, no level field", "warning field", "user warning field",
        "field and message disagree", "unknown field", "laravel fragment without field",
        "level word elsewhere in the block",
    ],
)
def test_a_framework_block_is_salvaged_only_by_its_level_field(block: str) -> None:
    """Laravel throws every PHP error but a deprecation as an ErrorException, which ends
    the request: its block is salvaged only when its level field (Whoops' "(E_…)" after
    the class) says deprecation or notice, and the message's level, if it names one,
    agrees; never because "deprecated" or "notice" is somewhere in the text."""
    for body in (block + STATUS_JSON, RAW_DEPRECATED + STATUS_JSON + "\n" + block):
        salvaged = parsing.strip_php_notices(body)
        assert salvaged.severity is None and salvaged.refusal is not None, salvaged
        with pytest.raises(NotJSON):
            parsing.parse_status(body)


@pytest.mark.parametrize(
    ("block", "severity"),
    [
        (whoops("E_DEPRECATED", "Return type of App\\Support\\Bag::offsetGet($key) should either be compatible"
                " with ArrayAccess::offsetGet(mixed $offset): mixed"), "deprecated"),
        (whoops("E_USER_DEPRECATED", "The Request::input() method is deprecated"), "deprecated"),
        (whoops("E_DEPRECATED", "Deprecated: strlen(): Passing null to parameter #1"), "deprecated"),
        (whoops("E_NOTICE", "Undefined index: warning"), "notice"),
        (LARAVEL_DEPRECATION, "deprecated"),
    ],
    ids=["E_DEPRECATED", "E_USER_DEPRECATED", "E_DEPRECATED with Symfony's prefix", "E_NOTICE", "laravel fragment"],
)
def test_a_framework_deprecation_block_is_salvaged(block: str, severity: str) -> None:
    for body in (block + STATUS_JSON, STATUS_JSON + "\n" + block):
        salvaged = parsing.strip_php_notices(body)
        assert (salvaged.severity, salvaged.refusal) == (severity, None)
        assert parsing.parse_status(body) == partial_usd()


# Real answers of the project's PHP panel (tests/php_panel), captured from `php -n -S`.
PHP_ANSWERS = Path(__file__).resolve().parent.parent / "fixtures" / "php"


def php_answer(name: str) -> str:
    return (PHP_ANSWERS / name).read_text(encoding="utf-8")


def test_real_codeigniter_answer_with_warnings_before_and_after_the_json() -> None:
    body = php_answer("codeigniter_status_multi.txt")
    assert len(body) > 10_000 and body.count("A PHP Error was encountered") > 10
    assert parsing.parse_status_multi(body) == {
        7: OrderReport(OrderStatus.PARTIAL, "Partial", Decimal("0.90000"), 3572, 157, "USD"),
        8: OrderReport(OrderStatus.PENDING, "Pending", Decimal("0.90000"), 3572, 1000, "USD"),
        9: ItemError("Incorrect order ID"),
    }
    salvaged = parsing.strip_php_notices(body)
    assert salvaged.severity == "warning" and salvaged.diagnostics == body.count("A PHP Error was encountered")


def test_real_php_html_answer() -> None:
    body = php_answer("php_html_status.txt")
    assert "<b>Deprecated</b>" in body and "session_start(): Session cannot be started" in body
    assert parsing.parse_status(body) == OrderReport(
        OrderStatus.PARTIAL, "Partial", Decimal("0.90000"), 3572, 157, "USD")


@pytest.mark.parametrize("name", ["codeigniter_invalid_key.txt", "php_html_invalid_key.txt"])
@pytest.mark.parametrize("parse", [
    parsing.parse_services, parsing.parse_add, parsing.parse_status, parsing.parse_status_multi,
    parsing.parse_refill, parsing.parse_refill_multi, parsing.parse_refill_status,
    parsing.parse_refill_status_multi, parsing.parse_cancel, parsing.parse_balance,
])
def test_a_rejected_key_behind_php_warnings_is_invalid_key(name: str, parse: Callable[[str], object]) -> None:
    body = php_answer(name)
    assert "Trying to access array offset on value of type null" in body
    with pytest.raises(InvalidKey):
        parse(body)
    assert parsing.top_level_error_message(body) == "Invalid API key"


# Real answers of open-source PHP panels run under PHP 8.2 with php -S and PHP's own
# output defaults (display_errors on, html_errors on, output_buffering off), their keys
# absent from the bodies: BoostPanel (CodeIgniter 3) and an MSM "SMM Script" panel
# (BoostedSMM), which reads only `order=` and `refill=`.
REAL_PANELS = Path(__file__).resolve().parent.parent / "fixtures" / "real_panels"


def real_answer(name: str) -> str:
    return (REAL_PANELS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(("name", "parse"), [
    ("msm_status_orders.txt", parsing.parse_status_multi),
    ("msm_refill_status_refills.txt", parsing.parse_refill_status_multi),
])
def test_a_panel_reading_only_the_single_form_refuses_every_batch(name: str, parse: Callable[[str], object]) -> None:
    body = real_answer(name)
    assert "<b>Warning</b>" in body
    with pytest.raises(ProviderRejected) as refused:
        parse(body)
    assert refuses_batch_form(refused.value)


def test_the_msm_panels_refill_in_progress() -> None:
    assert parsing.parse_refill_status(real_answer("msm_refill_status_refilling.txt")) == RefillReport(
        RefillStatus.IN_PROGRESS, "Refilling"
    )


def test_boostpanel_without_a_refill_action_says_the_request_is_invalid() -> None:
    body = real_answer("boostpanel_refill.txt")
    assert body.count("A PHP Error was encountered") > 10
    with pytest.raises(IncorrectRequest):
        parsing.parse_refill(body)


def test_a_body_of_many_blocks_is_read_whole() -> None:
    """Real answers reach 80 KB: every block is read, however many (timing in
    benchmarks/php_noise.py)."""
    noise = (codeigniter("8192") + "\n" + RAW_WARNING) * 150
    assert len(noise) > 80_000
    salvaged = parsing.strip_php_notices(noise + STATUS_JSON + RAW_NOTICE)
    assert salvaged.severity == "warning" and salvaged.diagnostics == 301


@pytest.mark.parametrize("wrapping", ["\ufeff{}", "\n\t {} \r\n", "\ufeff\n{}\n"])
def test_bom_and_whitespace_around_json_are_fine(wrapping: str) -> None:
    body = wrapping.replace("{}", '{"status": "Pending"}')
    assert parsing.parse_status(body) == OrderReport(
        OrderStatus.PENDING, "Pending", None, None, None, None
    )


# --- top-level errors ----------------------------------------------------------------

ALL_PARSERS: list[Callable[[str], object]] = [
    parsing.parse_services, parsing.parse_add, parsing.parse_status, parsing.parse_status_multi,
    parsing.parse_refill, parsing.parse_refill_multi, parsing.parse_refill_status,
    parsing.parse_refill_status_multi, parsing.parse_cancel, parsing.parse_balance,
]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Invalid API key", InvalidKey),
        ("Not enough funds", InsufficientFunds),
        ("Incorrect request", IncorrectRequest),
        ("Refill is disabled", ProviderRefused),
    ],
)
@pytest.mark.parametrize("parse", ALL_PARSERS)
def test_top_level_errors_are_typed(
    parse: Callable[[str], object], message: str, expected: type[ProviderRejected]
) -> None:
    with pytest.raises(ProviderRejected) as caught:
        parse(json.dumps({"error": message}))
    assert type(caught.value) is expected
    assert caught.value.provider_message == message


@pytest.mark.parametrize(
    ("parse", "message"),
    [
        (parsing.parse_status, "Incorrect order ID"),
        (parsing.parse_refill_status, "Refill not found"),
    ],
)
def test_single_not_found_is_an_item_error(parse: Callable[[str], object], message: str) -> None:
    result = parse(json.dumps({"error": message}))
    assert result == ItemError(message)
    assert isinstance(result, ItemError) and result.means_not_found


@pytest.mark.parametrize("message", ["Incorrect order ID", "Order not found", "invalid order id"])
def test_one_id_multi_status_answered_with_a_top_level_not_found(message: str) -> None:
    """Real panels answer ``orders=<one id>`` like ``order=``: a top-level error about
    that one order is its per-ID not-found, not a failed call."""
    parse = parsing.parse_status_one_of_multi(42)
    answers = parse(json.dumps({"error": message}))
    assert answers == {42: ItemError(message)}
    assert answers[42].means_not_found if isinstance(answers[42], ItemError) else False


def test_one_id_multi_status_answered_in_the_single_form() -> None:
    parse = parsing.parse_status_one_of_multi(42)
    assert parse(seed("000_status.json")) == {42: partial_usd()}
    # The batch forms still work, and the other top-level errors still fail the call.
    assert parse('{"42": {"status": "Partial", "charge": "0.27819", "start_count": "3572",'
                 ' "remains": "157", "currency": "USD"}}') == {42: partial_usd()}
    assert parse('{"42": {"error": "Incorrect order ID"}}') == {42: ItemError("Incorrect order ID")}
    with pytest.raises(InvalidKey):
        parse('{"error": "Invalid API key"}')
    with pytest.raises(ProviderRefused):
        parse('{"error": "Service is temporarily unavailable"}')


def test_refill_refusal_nested_in_a_single_refill_is_raised() -> None:
    with pytest.raises(ProviderRefused) as caught:
        parsing.parse_refill('{"refill": {"error": "Refill is available after 24 hours"}}')
    assert caught.value.provider_message == "Refill is available after 24 hours"


def test_top_level_error_message_helper() -> None:
    assert parsing.top_level_error_message('{"error": "Invalid API key"}') == "Invalid API key"
    assert parsing.top_level_error_message('{"error": null, "order": 1}') is None
    assert parsing.top_level_error_message("<html>") is None


# --- the key never shows -------------------------------------------------------------


def _everything_about(error: BaseException) -> str:
    # Nothing chained: a chained exception could carry the unredacted body.
    assert error.__context__ is None and error.__cause__ is None
    return "".join(traceback.format_exception(error)) + repr(error) + str(vars(error))


@pytest.mark.parametrize(
    "body",
    [
        f"<html><body>Bad request: key={KEY}&action=status</body></html>",
        f'<br /><b>Warning</b>: bad key {KEY} on line 3<br />{{"status": "Pending"}}',
        f'{{"status": "Parti {KEY}',
        f'{{"charge": "{KEY}", "status": "Completed"}}',
        f'{{"status": ["{KEY}"]}}',
        f'{{"error": "Invalid API key {KEY}"}}',
        f'{{"error": "Refused for key={KEY}"}}',
        f'{{"error": {{"message": "{KEY} is wrong"}}}}',
        f'{{"key": "{KEY}", "action": "status"}}',
    ],
)
def test_key_is_never_in_an_error(body: str) -> None:
    with pytest.raises(ProviderError) as caught:
        parsing.parse_status(body, secrets=[KEY])
    assert KEY not in _everything_about(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        f'{{"1": {{"error": "Incorrect order ID for {KEY}"}}}}',
        f'{{"1": {{"status": "Completed", "remains": "{KEY}"}}}}',
        f'{{"1": "{KEY}"}}',
    ],
)
def test_key_is_never_in_an_item_error(body: str) -> None:
    [entry] = parsing.parse_status_multi(body, secrets=[KEY]).values()
    assert isinstance(entry, ItemError)
    assert KEY not in entry.message


def test_key_in_a_batch_id_is_redacted() -> None:
    with pytest.raises(UnexpectedShape) as caught:
        parsing.parse_status_multi(json.dumps({KEY: {"status": "Pending"}}), secrets=[KEY])
    assert KEY not in _everything_about(caught.value)


def test_a_value_beyond_the_database_columns_makes_only_its_entry_unreadable() -> None:
    text = (
        '{"1": {"status": "Completed", "remains": 100000000000000000000000000000, "charge": "1.5"},'
        ' "2": {"status": "Partial", "remains": "5", "charge": "12345678901234567.5"},'
        ' "3": {"status": "Completed", "remains": "0", "charge": "0.25", "currency": "US DOLLARS"}}'
    )
    answers = parsing.parse_status_multi(text)
    assert isinstance(answers[1], parsing.ItemError) and "remains" in answers[1].message
    assert isinstance(answers[2], parsing.ItemError) and "charge" in answers[2].message
    third = answers[3]
    assert not isinstance(third, parsing.ItemError)
    assert third.charge == Decimal("0.25") and third.currency == "US DOLLA"


# --- money at the scale the database stores ------------------------------------------

# NUMERIC(24, 8): PostgreSQL rounds a value with more places half away from zero.
STORED_QUANTUM = Decimal("1E-8")


def _stored(value: Decimal) -> Decimal:
    return value.quantize(STORED_QUANTUM, rounding=ROUND_HALF_UP)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.000410922", "0.00041092"),
        ("0.000000005", "1E-8"),
        ("-0.000000005", "-1E-8"),
        ("1.123456785", "1.12345679"),
        ("2.5E-9", "0E-8"),
    ],
)
def test_a_charge_with_more_than_8_places_is_rounded_as_the_database_stores_it(
    text: str, expected: str
) -> None:
    for body in (f'{{"status": "Completed", "charge": "{text}"}}', f'{{"status": "Completed", "charge": {text}}}'):
        report = parsing.parse_status(body)
        assert isinstance(report, OrderReport)
        assert report.charge == Decimal(expected)
        assert str(report.charge) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.decimals(
        min_value=Decimal("-9999999999999999"), max_value=Decimal("9999999999999999"),
        allow_nan=False, allow_infinity=False, places=None,
    ).filter(lambda value: abs(_stored(value)) < Decimal(10) ** 16)
)
def test_any_parsed_charge_round_trips_through_the_stored_scale(value: Decimal) -> None:
    for literal in (str(value), f'"{value}"'):
        report = parsing.parse_status(f'{{"status": "In progress", "charge": {literal}}}')
        assert isinstance(report, OrderReport) and report.charge is not None
        # What NUMERIC(24, 8) would keep is what the parser already returned...
        assert _stored(report.charge) == report.charge
        assert report.charge == _stored(value)
        # ...and parsing the same answer again gives the same value (no spurious change).
        again = parsing.parse_status(f'{{"status": "In progress", "charge": {literal}}}')
        assert isinstance(again, OrderReport) and again.charge == report.charge
