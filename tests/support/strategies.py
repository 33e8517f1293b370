"""Hypothesis strategies: nasty single-customer histories.

Overdrafts (debits larger than what is there), out-of-order events within the
customer (late by up to ~10 days, sometimes far more), local day and month
boundaries in Asia/Shanghai, the same instant written with several UTC
offsets, every kind, external banks, ledger balances on two accounts, and
spans beyond 90 days so that windows slide and state is pruned.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import strategies as st

from rules.events import TransactionEvent

ZONE = dt.timezone(dt.timedelta(hours=8))
OFFSETS = [dt.timedelta(hours=h) for h in (8, 0, -5, 5.5, 14, -12)]
KINDS = ["salary", "pension", "transfer_in", "transfer_out", "cash_deposit", "cash_withdrawal", "card_payment",
         "loan_disbursement", "loan_repayment", "interest", "fee", "other"]  # fmt: skip
BANKS = ["ICBC", "CCB", "BOC", "ABC", "CMB", None]
# Starts just before a local midnight at a month end, so days and months roll over early.
START = dt.datetime(2024, 1, 31, 23, 0, tzinfo=ZONE)

WINDOWS = [dt.timedelta(days=d) for d in (1, 7, 30, 90)]

gaps = st.one_of(
    st.integers(min_value=0, max_value=90),  # seconds: same instant or nearly
    st.integers(min_value=0, max_value=6 * 3600),  # within hours: crosses local midnights
    st.integers(min_value=0, max_value=20 * 86_400),  # days: windows slide, state is pruned
)


@st.composite
def _event(draw: st.DrawFn, index: int, clock: dt.datetime, credit_bias: float) -> TransactionEvent:
    late = draw(st.sampled_from([0, 0, 0, 0, 1, 2]))
    moment = clock
    if late == 1:
        moment -= dt.timedelta(seconds=draw(st.integers(min_value=1, max_value=10 * 86_400)))
    elif late == 2:
        moment -= dt.timedelta(days=draw(st.integers(min_value=20, max_value=200)))
    offset = draw(st.sampled_from(OFFSETS))
    credit = draw(st.floats(min_value=0, max_value=1)) < credit_bias
    external = draw(st.booleans())
    amount = Decimal(draw(st.integers(min_value=1, max_value=2_000_000))) / 100
    obj: dict[str, object] = {
        "txn_id": f"t{index}",
        "customer_id": "c",
        "account_id": draw(st.sampled_from(["a1", "a2"])),
        "ts": moment.astimezone(dt.timezone(offset)).isoformat(),
        "direction": "credit" if credit else "debit",
        "amount": str(amount),
        "kind": draw(st.sampled_from(KINDS)),
        "external": external,
    }
    if external:
        bank = draw(st.sampled_from(BANKS))
        if bank:
            obj["counterparty_bank"] = bank
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        obj["balance_after"] = str(Decimal(draw(st.integers(min_value=-(10**8), max_value=10**8))) / 100)
    return TransactionEvent.model_validate(obj)


@st.composite
def histories(draw: st.DrawFn, max_events: int = 40) -> tuple[list[TransactionEvent], dt.datetime]:
    """(events in arrival order, an as_of at or after the latest ts)."""
    count = draw(st.integers(min_value=1, max_value=max_events))
    clock = START + dt.timedelta(seconds=draw(st.integers(min_value=0, max_value=7200)))
    credit_bias = draw(st.sampled_from([0.3, 0.5, 0.7]))
    events = []
    for i in range(count):
        clock += dt.timedelta(seconds=draw(gaps))
        events.append(draw(_event(i, clock, credit_bias)))
    latest = max(e.ts for e in events)
    as_of = latest + dt.timedelta(seconds=draw(st.integers(min_value=0, max_value=40 * 86_400)))
    # Often put as_of exactly one window after an event: the window's open start must exclude it.
    on_edge = [e.ts + w for e in events for w in WINDOWS if e.ts + w >= latest]
    if on_edge and draw(st.booleans()):
        as_of = draw(st.sampled_from(on_edge))
    return events, as_of.astimezone(draw(st.sampled_from([ZONE, dt.UTC])))


@st.composite
def event_sequences_for_cap(draw: st.DrawFn) -> tuple[list[TransactionEvent], dt.datetime]:
    """Mostly credits, so lots pile up past small caps and merge; some debits consume merged lots."""
    count = draw(st.integers(min_value=3, max_value=30))
    clock = START
    events = []
    for i in range(count):
        clock += dt.timedelta(seconds=draw(st.integers(min_value=0, max_value=3 * 86_400)))
        events.append(draw(_event(i, clock, 0.75)))
    as_of = max(e.ts for e in events) + dt.timedelta(hours=draw(st.integers(min_value=0, max_value=48)))
    return events, as_of


REVERSIBLE_DAYS = 80  # reversed within this much event time: the original is still kept and remembered


def reversal_of(original: TransactionEvent, txn_id: str, ts: dt.datetime) -> TransactionEvent:
    """The reversal of ``original`` at ``ts``: the same amount back the other way."""
    return TransactionEvent.model_validate(
        {
            "txn_id": txn_id,
            "customer_id": original.customer_id,
            "account_id": original.account_id,
            "ts": ts.isoformat(),
            "direction": "debit" if original.direction == "credit" else "credit",
            "amount": str(original.amount),
            "kind": original.kind,
            "reverses": original.txn_id,
            "counterparty_customer_id": original.counterparty_customer_id,
        }
    )


@st.composite
def histories_with_corrections(
    draw: st.DrawFn, max_events: int = 30, horizon_days: int = 120
) -> tuple[list[TransactionEvent], dt.datetime]:
    """``histories`` with own-account transfers among the events and reversals of some of them
    interleaved after them in arrival order (each at the event time reached so far, within
    ``REVERSIBLE_DAYS`` of its original). Originals that the state refuses (older than the
    dedup horizon when they arrive) are never reversed."""
    events, as_of = draw(histories(max_events))
    events = [
        e.model_copy(update={"counterparty_customer_id": e.customer_id}) if draw(st.integers(0, 5)) == 0 else e
        for e in events
    ]
    horizon = dt.timedelta(days=horizon_days)
    applied, latest = [], None
    for e in events:
        if latest is None or e.ts > latest - horizon:
            applied.append(e.txn_id)
        latest = e.ts if latest is None else max(latest, e.ts)
    chosen = draw(st.lists(st.sampled_from(applied), unique=True, max_size=6)) if applied else []
    result = list(events)
    for n, txn_id in enumerate(chosen):
        index = next(i for i, e in enumerate(result) if e.txn_id == txn_id)
        after = draw(st.integers(min_value=index + 1, max_value=len(result)))
        reached = max(e.ts for e in result[:after])
        original = result[index]
        if reached - original.ts > dt.timedelta(days=REVERSIBLE_DAYS):
            continue
        at = reached + dt.timedelta(seconds=draw(st.integers(min_value=0, max_value=3600)))
        result.insert(after, reversal_of(original, f"r{n}", at))
    latest_ts = max(e.ts for e in result)
    return result, max(as_of, latest_ts)
