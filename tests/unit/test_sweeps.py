"""The sweep's parts (issue 32), each against a slow, obviously correct reference:

* ``streams.tools.evaluate.sweep_outcome``, the per-sweep check of ``evaluate-rules``: the
  customer's later transactions replayed with the amount swept out, against a simulation of
  the two accounts (current account and fund) that redeems whenever the current account would
  go below zero;
* the history buffer's measures in ``rules.engine`` (the worst month's outflow, the lowest
  balance, the largest 30-day drawdown), against brute force over every window.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, localcontext
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.config import RulesConfig
from rules.engine import expected_redemption, judge, largest_outflow, lowest_balance, spending
from rules.events import TransactionEvent
from rules.state import CustomerState, Outcome, StateConfig, apply_transaction, to_us
from streams.tools.evaluate import YEAR_US, Flow, SweepOutcome, sweep_outcome

ZONE = ZoneInfo("Asia/Shanghai")
CONFIG = StateConfig(ZONE)
START = dt.datetime(2024, 3, 1, 10, 0, tzinfo=ZONE)
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(50_000), places=2)
flows_st = st.lists(
    st.tuples(st.integers(min_value=0, max_value=45 * 24), st.booleans(), amounts, st.booleans()),  # hour, credit, ..
    max_size=40,
)


def simulated(
    balance: Decimal, start: int, later: list[Flow], amount: Decimal, instalment: Decimal, spread: Decimal, horizon: int
) -> SweepOutcome:
    """The customer follows the sweep: the fund holds what was swept; whenever the current
    account would go below zero they redeem what it needs (as far as the fund goes)."""
    end = start + horizon
    account, fund = balance - amount, amount
    untouched = lowest = balance - amount  # the current account had they never redeemed
    short_of_instalment, due = untouched < instalment, True
    held: list[tuple[int, Decimal]] = []  # (µs, fund level over them)

    def redeem() -> None:
        nonlocal account, fund
        if account < 0:
            take = min(fund, -account)
            fund, account = fund - take, account + take

    redeem()
    now = start
    for flow in [f for f in later if f.ts_us <= end]:
        held.append((flow.ts_us - now, fund))
        now = flow.ts_us
        due = due and not (flow.repayment and flow.amount < 0)
        account += flow.amount
        untouched += flow.amount
        lowest = min(lowest, untouched)
        short_of_instalment = short_of_instalment or (due and untouched < instalment)
        redeem()
    held.append((end - now, fund))
    with localcontext() as ctx:
        ctx.prec = 60
        gain = sum((spread * level * span / YEAR_US for span, level in held), Decimal(0))
        if_held = spread * amount * horizon / YEAR_US
    return SweepOutcome(lowest, lowest < 0, short_of_instalment, amount - fund, gain, if_held)


@settings(max_examples=300)
@given(
    st.decimals(min_value=Decimal(-1_000), max_value=Decimal(200_000), places=2),
    amounts,
    st.decimals(min_value=Decimal(0), max_value=Decimal(10_000), places=2),
    flows_st,
)
def test_sweep_outcome_matches_a_simulation_of_both_accounts(
    balance: Decimal, amount: Decimal, instalment: Decimal, raw: list[tuple[int, bool, Decimal, bool]]
) -> None:
    start = to_us(START)
    later = sorted(
        (Flow(start + 1 + hour * HOUR_US, value if credit else -value, repayment and not credit)
         for hour, credit, value, repayment in raw),
        key=lambda f: f.ts_us,
    )  # fmt: skip
    spread, horizon = Decimal("0.0185"), 30 * DAY_US
    got = sweep_outcome(balance, start, later, amount, instalment, spread, horizon)
    want = simulated(balance, start, later, amount, instalment, spread, horizon)
    assert got.headroom == want.headroom and got.short == want.short
    assert got.short_of_instalment == want.short_of_instalment
    assert got.redeemed == want.redeemed
    assert abs(got.gain - want.gain) < Decimal("1e-30") and got.held_gain == want.held_gain
    assert 0 <= got.gain <= got.held_gain


def test_a_sweep_redeemed_halfway_earns_half() -> None:
    start = to_us(START)
    spend = Flow(start + 15 * DAY_US, Decimal(-20_000))
    outcome = sweep_outcome(
        Decimal(30_000), start, [spend], Decimal(20_000), Decimal(0), Decimal("0.0365"), 30 * DAY_US
    )
    assert (outcome.short, outcome.headroom, outcome.redeemed) == (True, Decimal(-10_000), Decimal(10_000))
    # 20,000 for 15 days and 10,000 for 15 days at 3.65% a year: 30 + 15
    assert outcome.gain == Decimal(45) and outcome.held_gain == Decimal(60)


# --- the history buffer ------------------------------------------------------------------------

history_st = st.lists(
    st.tuples(st.integers(min_value=0, max_value=80 * 24), st.sampled_from(["credit", "debit", "loan"]), amounts),
    min_size=1,
    max_size=40,
    unique_by=lambda t: t[0],  # one transaction a moment: the brute force reads balances by moment
)


def state_of(raw: list[tuple[int, str, Decimal]]) -> tuple[CustomerState, list[tuple[int, Decimal, bool]]]:
    state = CustomerState("c")
    rows = []
    for n, (hour, what, value) in enumerate(sorted(raw)):
        when = START + dt.timedelta(hours=hour)
        event = TransactionEvent(
            txn_id=f"t{n}", customer_id="c", account_id="c", ts=when, amount=value,
            direction="credit" if what == "credit" else "debit", kind="loan_repayment" if what == "loan" else "other",
        )  # fmt: skip
        assert apply_transaction(state, event, CONFIG) is Outcome.APPLIED
        rows.append((to_us(when), value if what == "credit" else -value, what == "loan"))
    return state, rows


@given(history_st, st.integers(min_value=0, max_value=80 * 24), st.integers(min_value=1, max_value=40))
def test_the_buffers_measures_match_brute_force(raw: list[tuple[int, str, Decimal]], back: int, days: int) -> None:
    state, rows = state_of(raw)
    since = to_us(START) + back * HOUR_US  # on the hours the transactions are: every edge is met
    window = days * DAY_US
    now = rows[-1][0]

    debits = [(ts, -v) for ts, v, loan in rows if v < 0 and not loan and ts > since]
    assert spending(state, since, now) == debits
    worst = max((sum((v for t, v in debits if s <= t < s + window), Decimal(0)) for s, _ in debits), default=Decimal(0))
    assert largest_outflow(debits, window) == worst

    def balance_at(moment: int) -> Decimal:
        return sum((v for ts, v, _ in rows if ts <= moment), Decimal(0))

    moments = [since] if rows[0][0] <= since else []  # before the first transaction there is no account
    moments += [ts for ts, _, _ in rows if ts > since]
    assert lowest_balance(state, since) == min([balance_at(m) for m in moments] + [state.balance])

    def own_money(moment: int) -> Decimal:  # every flow but loan repayments since ``since``
        return sum((v for ts, v, loan in rows if since < ts <= moment and not loan), Decimal(0))

    kept, amount = Decimal(days * 1_000), Decimal(30_000)
    starts = [since + k * DAY_US for k in range(200) if since + k * DAY_US + 30 * DAY_US <= now]

    def excess(u: int) -> Decimal:  # how far below day u's level the next 30 days went, beyond what is kept
        low = min([own_money(u)] + [own_money(ts) for ts, _, _ in rows if u < ts <= u + 30 * DAY_US])
        return min(amount, max(own_money(u) - low - kept, Decimal(0)))

    excesses = [excess(u) for u in starts]
    want = sum(excesses, Decimal(0)) / len(excesses) if excesses else Decimal(0)
    assert expected_redemption(state, since, now, kept, amount) == want


def test_the_buffer_keeps_the_worst_month_of_the_history_not_only_the_last() -> None:
    """Customer 10973's case in small: a quiet last month after a month that took 60,000."""
    state, _ = state_of(
        [(0, "credit", Decimal(200_000)), (24 * 20, "debit", Decimal(60_000)), (24 * 60, "debit", Decimal(800)),
         (24 * 70, "loan", Decimal(3_000))]
    )  # fmt: skip
    repayment = TransactionEvent(
        txn_id="t3", customer_id="c", account_id="c", ts=START + dt.timedelta(hours=24 * 70), direction="debit",
        amount=Decimal(3_000), kind="loan_repayment",
    )  # fmt: skip
    (sweep,) = [
        f for f in judge(state, repayment, Decimal(139_200), RulesConfig(), CONFIG).findings if f.kind != "push"
    ]
    assert sweep.evidence["largest_outflow_30d"] == "60000.00" and sweep.evidence["typical_outflow_30d"] == "800.00"
    assert sweep.evidence["safety_buffer"] == "30000.00"  # 0.5 × the worst month
    # the lowest balance (136,200 now) × 0.7 = 95,340 binds before 136,200 − 30,000; less the instalment
    assert sweep.evidence["idle"] == "92340.00" and sweep.extra["amount"] == "92300.00"
    assert "over 30 days" in sweep.message and "92,300.00" in sweep.message


def test_the_expected_redemption_reads_the_30th_day_too() -> None:
    state, rows = state_of([(0, "credit", Decimal(100_000)), (30 * 24, "debit", Decimal(50_000))])
    since, until = rows[0][0], rows[1][0]  # one month of history: one start, the debit on its 30th day
    assert expected_redemption(state, since, until, Decimal(20_000), Decimal(40_000)) == Decimal(30_000)
    assert expected_redemption(state, since, until, Decimal(60_000), Decimal(40_000)) == 0  # the account covers it
    assert expected_redemption(state, since, until - 1, Decimal(0), Decimal(40_000)) == 0  # no full month: none
