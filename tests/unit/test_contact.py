"""Consent, complaints and routes, pure (``contact.model``, ``contact.routes``, ``contact.gate``):
the state after any records in any order against a slow reference, the packed bytes, the
held reasons, the strict contact table and the import file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contact.gate import decide, is_push
from contact.model import (
    CHANNELS,
    DAY,
    Consent,
    ImportFileError,
    Parsed,
    Record,
    merge,
    parse_csv,
    read_text_lines,
)
from contact.routes import ContactConfig, ContactConfigError, load_contact, parse_contact
from rules.config import RulesConfigError, parse_rules

ROOT = Path(__file__).resolve().parents[2]
ZONE = ZoneInfo("Asia/Shanghai")
NOW = 1_760_000_000

records = st.lists(
    st.builds(
        Record,
        customer_id=st.just("c"),
        kind=st.sampled_from(["opt_out", "opt_in", "complaint"]),
        scope=st.sampled_from(["push", "sms", "all"]),
        at=st.integers(1, 40),  # few distinct seconds: ties happen
        source=st.integers(0, 3),
    ),
    max_size=25,
)


def reference_opted_out(history: list[Record], channel: str) -> bool:
    """Slow and plain: among the opt-in/opt-out records naming the channel or all, the latest
    by time decides; at the same second, an opt-out wins; none: not opted out."""
    relevant = [r for r in history if r.kind != "complaint" and r.scope in (channel, "all")]
    if not relevant:
        return False
    latest = max(r.at for r in relevant)
    return any(r.kind == "opt_out" for r in relevant if r.at == latest)


def reference_complaint(history: list[Record]) -> int:
    return max((r.at for r in history if r.kind == "complaint"), default=0)


@given(history=records, order=st.randoms(use_true_random=False))
def test_consent_after_any_records_in_any_order_is_the_reference(history: list[Record], order: object) -> None:
    shuffled = list(history)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    state = merge(shuffled)
    assert state == merge(history) or _same_view(state, merge(history))
    for channel in CHANNELS:
        assert state.opted_out(channel) == reference_opted_out(history, channel)
    assert state.complaint_at == reference_complaint(history)
    assert merge(history, state) == state  # every record again: nothing changes (an import run twice)
    assert Consent.unpack(state.pack()) == state and len(state.pack()) == 21


def _same_view(a: Consent, b: Consent) -> bool:
    """Two orders may leave a different ``source`` (the last change's), never a different state."""
    return (a.push, a.sms, a.all, a.complaint_at) == (b.push, b.sms, b.all, b.complaint_at)


def test_all_and_one_channel_combine_by_time() -> None:
    state = merge([Record("c", "opt_out", "all", 100), Record("c", "opt_in", "push", 200)])
    assert not state.opted_out("push") and state.opted_out("sms")
    assert state.held("push", NOW, 90) is None and state.held("sms", NOW, 90) == "opt_out:sms"
    later = state.apply(Record("c", "opt_in", "all", 300))
    assert not later.opted_out("sms") and not later.opted_out("push")
    old_import = later.apply(Record("c", "opt_out", "sms", 250, source=4))  # older than the opt-in of all
    assert not old_import.opted_out("sms") and old_import.source == 4


def test_a_complaint_holds_every_channel_for_its_window_only() -> None:
    state = Consent().apply(Record("c", "complaint", "all", NOW - 10 * DAY))
    assert all(state.held(c, NOW, 30) == "complaint" for c in CHANNELS)
    assert state.held("push", NOW, 10) is None  # the window is over
    assert state.held("push", NOW - 11 * DAY, 30) is None  # before the complaint was made
    assert state.complaint_until(30) == NOW + 20 * DAY


def test_routes_default_send_tier_one_to_the_relationship_manager() -> None:
    table = ContactConfig()
    assert table.route("I", "collection") == table.route("I", "sweep") == "rm"
    assert {table.route(t, c) for t in ("II", "III", "IV", None) for c in ("collection", "sweep")} == {"push"}
    assert table.route("I", "outflow_risk") == "push"  # not a marketing finding: no row
    assert load_contact(ROOT / "deploy" / "contact.yaml") == table == load_contact("defaults")


def test_the_contact_table_is_read_strictly() -> None:
    good = "version: 1\nroutes:\n  II: {collection: sms}\n"
    assert parse_contact(good).route("II", "collection") == "sms"
    assert parse_contact(good).route("II", "sweep") == "push"
    for text, where in (
        ("version: 1\nroutes:\n  V: {collection: rm}\n", "line 3: routes.V: unknown key"),
        ("version: 1\nroutes:\n  I: {collection: fax}\n", "line 3: routes.I.collection"),
        (
            "version: 1\ncomplaint_quiet_days: 3\ncomplaint_quiet_days: 4\n",
            "line 3: complaint_quiet_days: written twice",
        ),
        ("version: 2\n", "line 1: version"),
        ("", "empty file"),
        ("routes: [\n", "not valid YAML"),
    ):
        with pytest.raises(ContactConfigError) as refused:
            parse_contact(text, "c.yaml")
        assert where in str(refused.value) and "\n" not in str(refused.value)


def test_decide_routes_then_consent() -> None:
    push = {"id": "p1", "type": "push", "rule": "push_sweep", "category": "sweep", "customer_id": "c"}
    opted = Consent().apply(Record("c", "opt_out", "push", NOW - 5))
    table = ContactConfig()
    assert decide(push, "I", Consent(), table, NOW).held == "route:rm"
    assert decide(push, "II", opted, table, NOW).held == "opt_out:push"
    sms = parse_contact("version: 1\nroutes:\n  II: {sweep: sms}\n")
    went = decide(push, "II", opted, sms, NOW)  # push opted out, SMS not: the SMS route goes
    assert went.held is None and went.delivered_body(push)["channel"] == "sms"
    assert went.delivered_body(push)["tier"] == "II" and went.delivered_body(push)["route"] == "sms"
    assert is_push(push) and not is_push({**push, "retracts": "x"}) and not is_push({**push, "type": "alert"})


def test_the_rules_file_refuses_the_opt_out_list_and_escalate_tiers_in_one_line() -> None:
    with pytest.raises(RulesConfigError) as refused:
        parse_rules("version: 1\nmarketing:\n  opt_out: [c1]\n", "rules.yaml")
    message = str(refused.value)
    assert message.startswith("rules.yaml: line 3: marketing.opt_out:") and "\n" not in message
    assert "fundflow consent import --from-rules" in message
    assert parse_rules("version: 1\nmarketing:\n  opt_out: []\n").marketing.opt_out == frozenset()
    with pytest.raises(RulesConfigError, match=r"line 2: escalate_tiers: removed: .*contact"):
        parse_rules("version: 1\nescalate_tiers: [I]\n", "rules.yaml")
    parse_rules((ROOT / "deploy" / "rules.yaml").read_text())  # the shipped file has neither


def parse(text: str) -> tuple[list[Record], Parsed]:
    parsed = Parsed()
    return list(parse_csv(read_text_lines(text.encode()), ZONE, NOW, parsed)), parsed


def test_an_import_file_with_bad_rows_imports_the_rest_and_names_their_lines() -> None:
    found, parsed = parse(
        "\ufeffCustomer_ID,status,channel,recorded_at,note\n"
        "c1,opt_out,push,2025-01-02,called in\n"
        "c2,opt_out,fax,2025-01-02,\n"
        "\n"
        'c3,opt_in,"all",2025-01-02T10:00:00+08:00,"two\nlines"\n'
        "c4,maybe,push,2025-01-02,\n"
        "c5,opt_out,push,2025-01-02\n"
        "c6,complaint,,2025-01-03,\n"
        "c7,complaint,sms,2025-01-03,\n"
        "c8,opt_out,sms,2099-01-01,\n"
        "c9,opt_out,sms,2025-01-02T10:00:00,\n"
        ",opt_out,sms,2025-01-02,\n"
    )
    assert [r.customer_id for r in found] == ["c1", "c3", "c6"]
    assert found[0] == Record("c1", "opt_out", "push", int(dt.datetime(2025, 1, 2, tzinfo=ZONE).timestamp()))
    assert found[1].at == int(dt.datetime(2025, 1, 2, 2, tzinfo=dt.UTC).timestamp())
    assert found[2] == Record("c6", "complaint", "all", int(dt.datetime(2025, 1, 3, tzinfo=ZONE).timestamp()))
    assert parsed.rows == 10 and parsed.bad == 7  # the blank line is no row
    assert parsed.problems == [
        "line 3: channel must be one of push, sms, all",
        "line 7: status must be one of opt_out, opt_in, complaint",
        "line 8: 4 fields, the header has 5",
        "line 10: a complaint holds every channel: leave channel empty or write all",
        "line 11: recorded_at: in the future",
        "line 12: recorded_at: a date YYYY-MM-DD or an RFC 3339 time with an offset",
        "line 13: customer_id is empty",
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty file"),
        ("customer_id,channel,status\n", "line 1: missing column 'recorded_at'"),
        ("customer_id,channel,status,recorded_at,colour\n", "line 1: unknown column 'colour'"),
        ("customer_id,channel,status,recorded_at,channel\n", "line 1: a column is named twice"),
    ],
)
def test_a_bad_file_is_refused_in_one_line_before_any_record(text: str, why: str) -> None:
    with pytest.raises(ImportFileError) as refused:
        parse(text)
    assert str(refused.value).startswith(why) and "\n" not in str(refused.value)


def test_a_file_that_is_not_text_is_refused() -> None:
    with pytest.raises(ImportFileError, match="not UTF-8"):
        read_text_lines(b"customer_id\xff\n")
    with pytest.raises(ImportFileError, match="NUL"):
        read_text_lines(b"customer_id\x00\n")


ROUTE_TABLES = st.fixed_dictionaries(
    {
        t: st.fixed_dictionaries({c: st.sampled_from(["push", "sms", "rm"]) for c in ("collection", "sweep")})
        for t in ("I", "II", "III", "IV", "none")
    }
)


@given(table=ROUTE_TABLES, days=st.integers(0, 3650))
def test_any_table_written_out_is_read_back_and_looked_up_as_written(
    table: dict[str, dict[str, str]], days: int
) -> None:
    lines = ["version: 1", f"complaint_quiet_days: {days}", "routes:"]
    lines += [f"  {tier}: {{collection: {row['collection']}, sweep: {row['sweep']}}}" for tier, row in table.items()]
    read = parse_contact("\n".join(lines) + "\n")
    assert read.complaint_quiet_days == days
    for tier, row in table.items():
        for category, route in row.items():
            assert read.route(None if tier == "none" else tier, category) == route
    assert read.route("V", "sweep") == table["none"]["sweep"]  # a tier the table does not know: no tier


GOOD_ROWS = st.tuples(
    st.text(alphabet="ABC0123456789", min_size=1, max_size=12),
    st.sampled_from(["push", "sms", "all"]),
    st.sampled_from(["opt_out", "opt_in"]),
    st.dates(dt.date(2000, 1, 1), dt.date(2025, 10, 1)),  # not after NOW
)
DEFECTS = {
    "channel": ("X1,fax,opt_out,2025-01-01", "channel must be one of push, sms, all"),
    "status": ("X2,sms,maybe,2025-01-01", "status must be one of opt_out, opt_in, complaint"),
    "date": ("X3,sms,opt_out,01/02/2025", "recorded_at: a date YYYY-MM-DD or an RFC 3339 time with an offset"),
    "fields": ("X4,sms,opt_out", "3 fields, the header has 4"),
    "id": (",sms,opt_out,2025-01-01", "customer_id is empty"),
}


@given(rows=st.lists(st.one_of(GOOD_ROWS, st.sampled_from(sorted(DEFECTS))), max_size=40))
def test_an_import_file_yields_its_good_rows_in_order_and_names_every_bad_line(rows: list[object]) -> None:
    """Against the plain reading: line n + 2 holds row n; a good row is its record, a bad one its problem."""
    text = ["customer_id,channel,status,recorded_at"]
    wanted: list[Record] = []
    problems: list[str] = []
    for line, row in enumerate(rows, start=2):
        if isinstance(row, str):
            text.append(DEFECTS[row][0])
            problems.append(f"line {line}: {DEFECTS[row][1]}")
        else:
            customer, channel, status, day = row  # type: ignore[misc]
            text.append(f"{customer},{channel},{status},{day.isoformat()}")
            at = int(dt.datetime.combine(day, dt.time(), ZONE).timestamp())
            wanted.append(Record(customer, status, channel, at))
    found, parsed = parse("\n".join(text) + "\n")
    assert found == wanted
    assert (parsed.rows, parsed.bad, parsed.problems) == (len(rows), len(problems), problems[:20])


def test_a_time_is_read_in_ascii_digits_only_and_never_quoted_back() -> None:
    from contact.model import parse_time

    assert parse_time("2025-01-02", ZONE) == parse_time("2025-01-01T16:00:00Z", ZONE)
    for text in ("\u0662\u0660\u0662\u0665-01-02", "01/02/2025", "2025-01-02T10:00:00", "2025-13-01"):
        with pytest.raises(ValueError) as refused:
            parse_time(text, ZONE)
        assert text not in str(refused.value)
