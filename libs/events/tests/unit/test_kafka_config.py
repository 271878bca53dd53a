import random
import ssl

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from afterglow.events import KafkaConfig
from afterglow.events.kafka import KeyPartitioner, murmur2


class TestKafkaConfig:
    def test_plaintext_by_default(self):
        options = KafkaConfig("127.0.0.1:9092").connection_options()
        assert options == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}

    def test_scram_over_tls_for_strimzi_users(self):
        config = KafkaConfig(
            "kafka:9093", security_protocol="SASL_SSL", sasl_username="loyalty", sasl_password="pw"
        )
        options = config.connection_options()
        assert options["sasl_mechanism"] == "SCRAM-SHA-512"
        assert options["sasl_plain_username"] == "loyalty"
        assert isinstance(options["ssl_context"], ssl.SSLContext)


class TestKeyPartitioner:
    """Our producers' partitioner must put every key where aiokafka's default (and so
    every other producer of the topic) puts it: one customer's events, one partition."""

    def test_same_partition_as_the_default_partitioner_seen_once_or_again(self):
        rng = random.Random(18)
        ours, default = KeyPartitioner(), DefaultPartitioner()
        keys = [f"tenant-{rng.randrange(50)}:c{rng.randrange(10**6)}".encode() for _ in range(500)]
        for parts in ([0], list(range(12)), list(range(7)), [2, 5, 9]):
            for key in keys + keys:  # the second time from its memory
                assert ours(key, parts, parts) == default(key, parts, parts)

    def test_murmur2_is_aiokafkas_for_every_length_and_byte(self):
        rng = random.Random(7)
        keys = [b"", b"\x00", b"\xff" * 9, "tenant-é:c1".encode()]
        keys += [rng.randbytes(n) for n in range(40) for _ in range(25)]
        for key in keys:
            assert murmur2(key) == aiokafka_murmur2(key), key

    def test_no_key_goes_to_an_available_partition(self):
        assert KeyPartitioner()(None, [0, 1, 2], [1]) == 1
        assert KeyPartitioner()(None, [0, 1, 2], []) in (0, 1, 2)
