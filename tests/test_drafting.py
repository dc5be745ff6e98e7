"""NgramDrafter: what it drafts from earlier outputs, how far, and its bounds."""
import pytest

from omniad_edge.drafting import NgramDrafter


def test_drafts_what_followed_the_longest_known_suffix():
    d = NgramDrafter(order=3, length=4)
    d.learn([1, 2, 3, 4, 5, 6, 7])
    assert d.draft([9, 2, 3], limit=10) == [4, 5, 6, 7]  # order 2 ("2 3"); order 3 ("9 2 3") is unknown
    assert d.draft([1, 2, 3], limit=2) == [4, 5]
    assert d.draft([8], limit=4) == []
    assert d.draft([], limit=4) == [] and d.draft([1], limit=0) == []


def test_only_what_the_two_latest_outputs_agreed_on_is_drafted():
    d = NgramDrafter(order=1, length=8, first=3)
    d.learn([1, 2, 3, 4, 5])
    assert d.draft([1], 8) == [2, 3, 4]  # seen once: `first` tokens of it
    d.learn([1, 2, 3, 4, 5, 6])
    assert d.draft([1], 8) == [2, 3, 4, 5]  # the two outputs agree on four tokens
    d.learn([1, 2, 3, 9, 9])
    assert d.draft([1], 8) == [2, 3]  # the latest two agree on two tokens after "1"
    d.learn([1, 7])
    assert d.draft([1], 8) == []  # they disagree at once: no draft rather than a likely wrong one
    d.learn([1, 7])
    assert d.draft([1], 8) == [7]


def test_the_first_sighting_in_an_output_counts():
    d = NgramDrafter(order=1, length=2)
    d.learn([5, 1, 2, 5, 3, 4])
    assert d.draft([5], 4) == [1, 2]


def test_least_recently_seen_ngrams_are_dropped_first():
    d = NgramDrafter(order=1, length=1, max_keys=2)
    d.learn([1, 10])
    d.learn([2, 20])
    d.learn([1, 10])  # seen again: now the most recent
    d.learn([3, 30])
    assert d.draft([1], 1) == [10] and d.draft([3], 1) == [30] and d.draft([2], 1) == []
    d.clear()
    assert d.draft([1], 1) == []


@pytest.mark.parametrize("args", [{"order": 0}, {"length": 0}, {"max_keys": 0}, {"first": 0}])
def test_bad_settings_are_refused(args):
    with pytest.raises(ValueError, match="must be >= 1"):
        NgramDrafter(**args)
