"""offset_ahead: when a partition's offsets are past its log, on both brokers' terms."""

from __future__ import annotations

from afterglow.events.consumer import offset_ahead


def verdict(position, committed, end, highwater, suspected=False):
    return offset_ahead(
        position=position,
        committed=committed,
        end_offset=end,
        highwater=highwater,
        suspected_before=suspected,
    )


class TestOffsetAhead:
    def test_a_position_within_the_log_is_fine(self) -> None:
        assert verdict(14, 14, 14, 14) is None
        assert verdict(3, None, 10, None) is None

    def test_a_position_past_the_fetched_high_watermark_is_reset(self) -> None:
        # Tansu restarted empty: the member still stands at 27, the log ends at 14.
        assert verdict(27, 27, 14, 14) == "offset 27 was past the log end 14"

    def test_a_listed_end_short_of_the_high_watermark_is_not_a_reset(self) -> None:
        # Tansu lists the last batch's base offset + 1; the fetch knows better.
        assert verdict(3, 3, 1, 3) is None

    def test_without_a_fetch_yet_it_takes_two_checks(self) -> None:
        assert verdict(51, 51, 2, None) == "suspect"
        assert verdict(51, 51, 2, None, suspected=True) == "offset 51 was past the log end 2"

    def test_a_committed_offset_the_client_already_reset_below_is_caught_at_once(self) -> None:
        # Apache Kafka's client reset the position to earliest by itself, silently.
        assert verdict(0, 51, 2, None) == "committed offset 51 was past the log end 2"
