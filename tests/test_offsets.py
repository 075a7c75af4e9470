"""PartitionOffsets: the commit watermark never passes unfinished work, whatever the completion order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.offsets import PartitionOffsets


def test_nothing_fetched_has_no_committable_offset() -> None:
    offsets = PartitionOffsets()
    assert offsets.committable() is None
    assert offsets.pending == 0
    assert not offsets.seen(0)


def test_fetched_but_unfinished_offset_holds_the_watermark() -> None:
    offsets = PartitionOffsets()
    offsets.add(10)
    assert offsets.committable() == 10
    assert offsets.pending == 1


def test_all_done_commits_one_past_the_last_offset() -> None:
    offsets = PartitionOffsets()
    for offset in (5, 6, 7):
        offsets.add(offset)
    for offset in (5, 6, 7):
        offsets.done(offset)
    assert offsets.committable() == 8
    assert offsets.pending == 0


def test_later_offset_finishing_first_does_not_move_the_watermark() -> None:
    offsets = PartitionOffsets()
    for offset in (0, 1, 2):
        offsets.add(offset)
    offsets.done(2)
    offsets.done(1)
    assert offsets.committable() == 0
    offsets.done(0)
    assert offsets.committable() == 3


def test_gaps_in_offsets_jump_straight_to_the_next_unfinished() -> None:
    offsets = PartitionOffsets()
    for offset in (3, 9, 40):
        offsets.add(offset)
    offsets.done(3)
    assert offsets.committable() == 9
    offsets.done(9)
    assert offsets.committable() == 40
    offsets.done(40)
    assert offsets.committable() == 41


def test_done_twice_is_harmless() -> None:
    offsets = PartitionOffsets()
    offsets.add(0)
    offsets.add(1)
    offsets.done(0)
    offsets.done(0)
    assert offsets.committable() == 1
    assert offsets.pending == 1


def test_seen_is_true_up_to_the_highest_added_offset() -> None:
    offsets = PartitionOffsets()
    offsets.add(4)
    offsets.add(7)
    assert offsets.seen(0)
    assert offsets.seen(5)
    assert offsets.seen(7)
    assert not offsets.seen(8)
    offsets.done(7)
    assert offsets.seen(7)


@pytest.mark.parametrize("lower", [0, 9, 10])
def test_adding_an_offset_not_above_the_last_raises(lower: int) -> None:
    offsets = PartitionOffsets()
    offsets.add(10)
    with pytest.raises(ValueError, match="added after 10"):
        offsets.add(lower)


@st.composite
def fetched_then_finished(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    start = draw(st.integers(min_value=0, max_value=10**12))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60))
    fetched = [start]
    for gap in gaps[1:]:
        fetched.append(fetched[-1] + gap)
    order = draw(st.permutations(fetched))
    return fetched, list(order)


@settings(max_examples=300, deadline=None)
@given(fetched_then_finished(), st.data())
def test_watermark_is_the_smallest_unfinished_offset_in_any_completion_order(
    case: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    fetched, order = case
    offsets = PartitionOffsets()
    # Interleave fetching and finishing: a record can only finish after it was fetched.
    added = 0
    unfinished: set[int] = set()
    finished: list[int] = []
    while len(finished) < len(fetched):
        ready = [offset for offset in order if offset in unfinished]
        if added < len(fetched) and (not ready or data.draw(st.booleans())):
            offsets.add(fetched[added])
            unfinished.add(fetched[added])
            added += 1
        else:
            offset = ready[0]
            offsets.done(offset)
            unfinished.discard(offset)
            finished.append(offset)
        watermark = offsets.committable()
        assert watermark is not None
        assert offsets.pending == len(unfinished)
        if unfinished:
            assert watermark == min(unfinished)
        else:
            assert watermark == fetched[added - 1] + 1
        assert all(offset >= watermark for offset in unfinished)
    assert offsets.committable() == fetched[-1] + 1


def test_one_stuck_offset_does_not_make_finished_offsets_pile_up_in_memory() -> None:
    tracker = PartitionOffsets()
    for offset in range(100_000):
        tracker.add(offset)
        if offset:
            tracker.done(offset)
    assert tracker.pending == 1
    assert tracker.committable() == 0
    assert tracker.held < 3_000
    tracker.done(0)
    assert tracker.committable() == 100_000
