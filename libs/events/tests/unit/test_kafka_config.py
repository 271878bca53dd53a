import ssl

from afterglow.events import KafkaConfig


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
