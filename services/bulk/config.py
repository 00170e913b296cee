"""Kafka settings of the bulk path: broker addresses, security and topic names.

One place: `KafkaSettings.from_env()` reads MOLM3D_KAFKA_* variables (what k8s sets from Secrets),
and the `kafka` mapping of a deployment's `user_config` (`WithKafka`: the bulk worker's, and the
gateway's, which submits and reads jobs over HTTP) in serve.yaml / `--kafka` overrides them field by field.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..common.settings import Settings

ENV_PREFIX = "MOLM3D_KAFKA_"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = ""  # HOST:PORT[,HOST:PORT]; empty = bulk jobs off
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = ""  # e.g. SCRAM-SHA-512 (Strimzi), PLAIN
    username: str = ""
    password: str = ""
    ssl_cafile: str = ""
    jobs_topic: str = "molm3d.jobs"
    results_topic: str = "molm3d.results"
    dlq_topic: str = "molm3d.dlq"
    group: str = "molm3d-bulk"  # the workers' consumer group
    partitions: int = 4  # used only when molm3d creates a missing topic
    session_timeout_ms: int = 10_000  # how fast a dead worker's partitions move to another one

    @classmethod
    def from_env(cls, **overrides: Any) -> KafkaSettings:
        """Defaults <- MOLM3D_KAFKA_<FIELD> environment variables <- non-empty `overrides`."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw:
                values[f.name] = int(raw) if f.type == "int" else raw
        values.update({k: v for k, v in overrides.items() if v not in (None, "")})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            allowed = ", ".join(f.name for f in fields(cls))
            raise ValueError(f"unknown Kafka setting{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, sorted(unknown)))}; allowed: {allowed}")  # fmt: skip
        return cls(**values)

    def with_bootstrap(self, bootstrap: str | None) -> KafkaSettings:
        return replace(self, bootstrap=bootstrap) if bootstrap else self

    def client_options(self) -> dict[str, Any]:
        """Connection keyword arguments shared by kafka-python's producer, consumer and admin client."""
        if not self.bootstrap:
            raise ValueError("no Kafka broker configured: pass --kafka HOST:PORT or set MOLM3D_KAFKA_BOOTSTRAP")
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        if self.ssl_cafile:
            options["ssl_cafile"] = self.ssl_cafile
        return options

    def public(self) -> dict[str, Any]:
        """The settings without the password (for logs and provenance)."""
        return {k: ("***" if k == "password" and v else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class WithKafka(Settings):
    """Deployment settings with a `kafka` user_config key: KafkaSettings fields over the MOLM3D_KAFKA_*
    environment. A key KafkaSettings lacks fails at configuration ("<Class>: unknown Kafka setting ...")."""

    kafka: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kafka_settings()

    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings.from_env(**self.kafka)


def ensure_topics(settings: KafkaSettings) -> None:
    """Create the three topics when missing (a managed cluster creates them itself: KafkaTopic in k8s/)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**settings.client_options(), client_id="molm3d-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [settings.jobs_topic, settings.results_topic, settings.dlq_topic]
        missing = [NewTopic(t, settings.partitions, 1) for t in wanted if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(missing)
    finally:
        admin.close()
