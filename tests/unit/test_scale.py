"""streams.tools.scale: the memory model's arithmetic, against its own calibration run and by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest

from streams.tools import scale
from streams.tools.scale import CALIBRATION, COEFFICIENTS, board_bytes, predicted_bytes, slots_hit


def test_the_model_gives_back_the_run_it_was_measured_on() -> None:
    """The coefficients come from one run (``python -m streams.tools.memmodel``): the model
    with that run's counts gives its totals within the ±20% the bench holds it to."""
    args = (CALIBRATION["customers"], CALIBRATION["days_kept"], CALIBRATION["findings_kept"])
    used = predicted_bytes(*args, feed_entries=CALIBRATION["feed_entries"])
    keys = predicted_bytes(*args, feed_entries=CALIBRATION["feed_entries"], used_memory=False)
    assert used == pytest.approx(CALIBRATION["used_memory"], rel=0.2)
    assert keys == pytest.approx(CALIBRATION["keys_total"], rel=0.2)


def test_closed_days_keep_at_most_their_top() -> None:
    """A closed day costs min(K, positive customers) members whatever the bank's size, so past
    the open days the 看板 grows with days, not with customers × days."""
    c = COEFFICIENTS
    small, large = (board_bytes(400, active, 8, 200, False, c)[0] for active in (10_000, 1_000_000))
    opened_only = board_bytes(400, 1_000_000, 401, 200, False, c)[0]
    assert large - small == pytest.approx(8 * (1_000_000 - 10_000) * c.net_entry, rel=1e-9)
    assert opened_only > 40 * large


def test_a_cluster_spreads_a_day_over_the_slots_its_customers_fall_in() -> None:
    assert slots_hit(0) == 0 and slots_hit(1) == pytest.approx(1, rel=1e-3)
    assert slots_hit(10 * scale.SLOTS) == pytest.approx(scale.SLOTS, rel=1e-4)
    assert slots_hit(scale.SLOTS) == pytest.approx(scale.SLOTS * (1 - math.exp(-1)))
    c = dataclasses.replace(COEFFICIENTS, cells_per_day=10.0, cells_per_active=1.0)
    one, keys = board_bytes(0, 1, 1, 200, True, c)  # one customer, one day, one slot, no finding
    positive = c.positive_share / c.active_share  # (the share of active customers with a positive net)
    # the slot's shard keys and its generation; the bank-wide flow and histogram hashes, one
    # flow cell and the positive share of a histogram cell; the slot's net-outflow set
    expected = c.shard_key + c.cell + 2 * c.hash_key + (1.0 + positive) * c.cell + c.zset_key + c.net_entry_small
    assert one == pytest.approx(expected, rel=1e-3)
    assert keys == pytest.approx(2 + 2 + 1, rel=1e-3)  # the shard's own, the day's two hashes, the set


def test_a_customers_tier_entry_costs_the_same_at_any_customer_count() -> None:
    """The tier shards grow sub-shards with the customers (streams.tiers.layout_for), so a
    customer costs one listpack entry at a thousand customers and at a hundred million, and the
    bands a second entry for a quarter percent either side of each cut point: no step where a
    shard passes 128 customers and becomes a skiplist (before: ~74 B × customers at 4,097)."""
    c = COEFFICIENTS
    for n in (1_000, 4_096, 4_097, 1_000_000, 100_000_000):
        step = predicted_bytes(n + 1, 0, 0, used_memory=False) - predicted_bytes(n, 0, 0, used_memory=False)
        assert step == pytest.approx(c.customer + c.tier + 6 * 0.0025 * c.tier_big, abs=10), n
    assert c.tier < c.tier_big / 4
