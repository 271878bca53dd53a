"""Every service's consumer polls enough records to keep several partitions'
transactions in flight out of a backlog (ServiceSettings.consumer_max_records):
aiokafka fills a poll one partition's fetch at a time, so a small poll held one or two
partitions."""

from __future__ import annotations

from afterglow.kit.settings import ServiceSettings

# One fetch of a partition holds up to a few hundred order events on a busy topic.
RECORDS_PER_PARTITION_FETCH = 500


class TestConsumerSettings:
    def test_a_poll_out_of_a_backlog_feeds_every_parallel_transaction(self):
        settings = ServiceSettings()
        assert (
            settings.consumer_max_records
            >= settings.consumer_parallel_partitions * RECORDS_PER_PARTITION_FETCH
        )

    def test_the_environment_can_still_set_it(self, monkeypatch):
        monkeypatch.setenv("CONSUMER_MAX_RECORDS", "100")
        assert ServiceSettings().consumer_max_records == 100
