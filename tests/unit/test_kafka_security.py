"""Kafka client security options from the settings: SASL/SCRAM as kafka-python takes it,
and settings that do not fit together refused with the setting named."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from shortlist.config import Settings
from shortlist.feedback.bus import client_security


def test_plaintext_by_default():
    assert client_security(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_sasl_scram_options_are_kafka_pythons():
    settings = Settings(
        kafka_security_protocol="sasl_ssl",
        kafka_username="gateway",
        kafka_password="secret",
        kafka_ca_file="/etc/ca.crt",
    )
    options = client_security(settings)
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "gateway",
        "sasl_plain_password": "secret",
        "ssl_check_hostname": True,
        "ssl_cafile": "/etc/ca.crt",
    }
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(options) <= set(client.DEFAULT_CONFIG), client


def test_a_client_certificate_goes_with_ssl_protocols():
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ca_file="/etc/ca.crt",
        kafka_cert_file="/etc/client.crt",
        kafka_key_file="/etc/client.key",
    )
    options = client_security(settings)
    assert options == {
        "security_protocol": "SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": "/etc/ca.crt",
        "ssl_certfile": "/etc/client.crt",
        "ssl_keyfile": "/etc/client.key",
    }
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        assert set(options) <= set(client.DEFAULT_CONFIG), client


@pytest.mark.parametrize(
    "changes,named",
    [
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "SHORTLIST_KAFKA_USERNAME"),
        ({"kafka_security_protocol": "TLS"}, "SHORTLIST_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_username": "u", "kafka_password": "p"}, "use SASL_PLAINTEXT or SASL_SSL"),
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "GSSAPI",
                "kafka_username": "u",
                "kafka_password": "p",
            },
            "SHORTLIST_KAFKA_SASL_MECHANISM",
        ),
        # TLS files with a plaintext protocol would be ignored: refused
        (
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_username": "u",
                "kafka_password": "p",
                "kafka_ca_file": "/etc/ca.crt",
            },
            "use SSL or SASL_SSL",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_cert_file": "/etc/client.crt"},
            "SHORTLIST_KAFKA_CERT_FILE and SHORTLIST_KAFKA_KEY_FILE",
        ),
    ],
)
def test_settings_that_do_not_fit_are_refused_naming_them(changes, named):
    with pytest.raises(ValueError, match=named):
        client_security(Settings(**changes))
