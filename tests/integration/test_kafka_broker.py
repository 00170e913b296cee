"""The local broker (infra/kafka/broker.py) keeps acknowledged records across a crash of all its
processes and a restart: offsets continue where they were, nothing is overwritten. (Without
s3_guard.py, Tansu on rclone restarted every partition at offset 0.)"""

from __future__ import annotations

import pytest

from tests.broker import Broker


def _produce(bootstrap: str, values: list[bytes]) -> list[int]:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = [producer.send("t", key=b"k", value=v) for v in values]
    producer.flush()
    producer.close()
    return [f.get(timeout=10).offset for f in futures]


def _read_all(bootstrap: str) -> list[tuple[int, bytes]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    tp = TopicPartition("t", 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records, idle = [], 0
    while idle < 2:
        polled = consumer.poll(timeout_ms=1000)
        idle = 0 if polled else idle + 1
        records += [(r.offset, r.value) for batch in polled.values() for r in batch]
    consumer.close()
    return records


@pytest.mark.parametrize("stop", ["kill", "down"])
def test_records_survive_a_restart_and_offsets_continue(tmp_path, stop):
    from kafka.admin import KafkaAdminClient, NewTopic

    broker = Broker(tmp_path / "kafka")
    broker.up()
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic("t", 1, 1)])
        admin.close()
        first = [f"a{i}".encode() for i in range(25)]
        assert _produce(broker.bootstrap, first[:10]) + _produce(broker.bootstrap, first[10:]) == list(range(25))
        broker.kill() if stop == "kill" else broker.down()
        broker.up()
        second = [f"b{i}".encode() for i in range(5)]
        assert _produce(broker.bootstrap, second) == list(range(25, 30))
        assert _read_all(broker.bootstrap) == list(enumerate(first + second))
    finally:
        broker.down()


def test_readers_find_a_jobs_partition_where_the_producer_put_it(tmp_path):
    """bulk fetch reads only the job's partition: it must be the one kafka-python's producer chose."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from molm3d_services.bulk.jobs import partition_for

    broker = Broker(tmp_path / "kafka")
    broker.up()
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic("p", 4, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        jobs = [f"job-{i:03d}" for i in range(40)]
        futures = [producer.send("p", key=job.encode(), value=b"x") for job in jobs]
        producer.flush()
        producer.close()
        placed = [f.get(timeout=10).partition for f in futures]
        assert placed == [partition_for(job, 4) for job in jobs]
        assert set(placed) == {0, 1, 2, 3}
    finally:
        broker.down()
