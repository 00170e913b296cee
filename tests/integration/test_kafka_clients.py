"""librdkafka clients against the local broker (infra/kafka/broker.py): kcat from Debian (librdkafka
2.0.2) and confluent-kafka from PyPI (its own librdkafka) produce, and consume in a consumer group,
and kafka-python (the project's client) reads what they wrote and they read what it wrote. Behind
these: Tansu alone failed every librdkafka < 2.2 connection at its first request ("ApiVersionRequest
failed: Read underflow"); infra/kafka/kafka_guard.py encodes ApiVersions as Apache Kafka does."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import pytest

from tests.broker import Broker

SESSION_MS = 6000  # Tansu 0.6 answers a JoinGroup after about half the session timeout
# ApiVersionsResponse top-level tagged fields at their default values (what Apache Kafka leaves out).
DEFAULT_TAGS = {0: b"\x01", 1: b"\xff" * 8, 2: b"\x01", 3: b"\x00"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("kafka"))
    broker.up()
    yield broker
    broker.down()


def _create(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (data[at] & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not data[at - 1] & 0x80:
            return value, at


def _api_versions(port: int) -> tuple[list[tuple[int, int, int]], dict[int, bytes]]:
    """Send ApiVersions v3 (as librdkafka does first on every connection); return the response's
    (api key, min, max) list and its top-level tagged fields."""
    header = struct.pack(">hhih", 18, 3, 7, 4) + b"test" + b"\x00"  # key, version, correlation, client
    body = b"\x0blibrdkafka" + b"\x062.0.2" + b"\x00"  # compact strings (length + 1), no tagged fields
    request = header + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
        frame = s.recv(size, socket.MSG_WAITALL)
    correlation, error = struct.unpack(">ih", frame[:6])
    assert (correlation, error) == (7, 0)
    count, at = _uvarint(frame, 6)
    apis = []
    for _ in range(count - 1):
        apis.append(struct.unpack(">hhh", frame[at : at + 6]))
        assert frame[at + 6] == 0  # no tagged fields per api key
        at += 7
    at += 4  # throttle time
    tags, (count, at) = {}, _uvarint(frame, at)
    for _ in range(count):
        tag, at = _uvarint(frame, at)
        size, at = _uvarint(frame, at)
        tags[tag], at = frame[at : at + size], at + size
    assert at == len(frame)
    return apis, tags


def test_clients_get_api_versions_without_tagged_fields_at_their_defaults(broker):
    """Tansu writes all four (FinalizedFeaturesEpoch -1 is eight 0xff bytes, which librdkafka < 2.2
    misreads as a length); what clients get is Tansu's answer with those left out, as Apache Kafka
    encodes it."""
    apis, tags = _api_versions(broker.port)
    tansu_apis, tansu_tags = _api_versions(broker.tansu_port)
    assert apis == tansu_apis and len(apis) > 20
    assert tags == {tag: value for tag, value in tansu_tags.items() if DEFAULT_TAGS.get(tag) != value}
    assert tags == {}


def _kcat(*args: str, stdin: str | None = None, timeout: float = 60) -> str:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (`make setup` installs Debian's as root)")
    done = subprocess.run([kcat, *args], input=stdin, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Read underflow" not in done.stderr
    return done.stdout


def test_kcat_produces_and_consumes_in_a_group(broker):
    """kcat -P, then kcat -G to the end; a second -G run resumes from the group's committed offsets and
    sees only what kafka-python produced in between."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    _create(broker.bootstrap, "kcat", 2)
    common = ["-b", broker.bootstrap]
    _kcat(*common, "-P", "-t", "kcat", "-K", ":", stdin="".join(f"k{i}:v{i}\n" for i in range(20)))
    group = [*common, "-G", "kcat-group", "-X", f"session.timeout.ms={SESSION_MS}"]
    group += ["-X", "auto.offset.reset=earliest", "-e", "-f", "%k=%s\n", "kcat"]
    assert sorted(_kcat(*group).split()) == sorted(f"k{i}=v{i}" for i in range(20))

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(20, 25):
        producer.send("kcat", key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()
    assert sorted(_kcat(*group).split()) == sorted(f"k{i}=v{i}" for i in range(20, 25))

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="kcat-group", enable_auto_commit=False)
    partitions = [TopicPartition("kcat", p) for p in (0, 1)]
    committed = sum(consumer.committed(tp) for tp in partitions)
    consumer.close()
    assert committed == 25


def _poll(consumers: dict, want: int, timeout: float = 30) -> dict[str, list]:
    """Poll every consumer in turn (each must poll to take part in a rebalance) until `want` records
    arrived in all; {name: [(partition, key, value)]}."""
    got = {name: [] for name in consumers}
    deadline = time.monotonic() + timeout
    while sum(map(len, got.values())) < want and time.monotonic() < deadline:
        for name, consumer in consumers.items():
            message = consumer.poll(0.2)
            if message is not None:
                assert message.error() is None, message.error()
                got[name].append((message.partition(), message.key(), message.value()))
    return got


def _assigned(consumers: dict, partitions: int, timeout: float = 30) -> dict[str, set[int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = {name: {tp.partition for tp in c.assignment()} for name, c in consumers.items()}
        if all(owned.values()) and sum(map(len, owned.values())) == partitions:
            return owned
        for consumer in consumers.values():
            assert consumer.poll(0.2) is None  # nothing produced meanwhile
    raise AssertionError(f"no complete assignment within {timeout:.0f} s: {owned}")


def test_confluent_kafka_produces_and_a_group_of_two_shares_the_partitions(broker):
    """confluent-kafka's producer (murmur2 partitioner: keys land where kafka-python puts them) and two
    consumers of one group: the first gets all 4 partitions, the second's join splits them, each record
    reaches exactly one member, and the group's committed offsets are what kafka-python sees."""
    from confluent_kafka import Consumer, Producer
    from kafka import KafkaConsumer, TopicPartition

    from molm3d_services.bulk.jobs import partition_for

    _create(broker.bootstrap, "ck", 4)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "partitioner": "murmur2_random"})
    placed = {}

    def produce(keys: range) -> None:
        def report(err, message) -> None:
            assert err is None, err
            placed[message.key().decode()] = message.partition()

        for i in keys:
            producer.produce("ck", key=f"job-{i}", value=f"v{i}", on_delivery=report)
        assert producer.flush(30) == 0

    produce(range(40))
    assert placed == {f"job-{i}": partition_for(f"job-{i}", 4) for i in range(40)}

    config = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": "ck-group",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_MS,
        "enable.auto.commit": False,
    }
    first = Consumer(config)
    first.subscribe(["ck"])
    got = _poll({"first": first}, 40)["first"]
    assert sorted(v for _, _, v in got) == sorted(f"v{i}".encode() for i in range(40))
    first.commit(asynchronous=False)

    second = Consumer(config)
    second.subscribe(["ck"])
    members = {"first": first, "second": second}
    owned = _assigned(members, 4)
    assert owned["first"].isdisjoint(owned["second"])

    produce(range(40, 80))
    got = _poll(members, 40)
    values = [v for records in got.values() for _, _, v in records]
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(40, 80))  # each exactly once
    for name, records in got.items():
        assert {p for p, _, _ in records} <= owned[name]
        members[name].commit(asynchronous=False)
    for consumer in members.values():
        consumer.close()

    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="ck-group", enable_auto_commit=False)
    tps = [TopicPartition("ck", p) for p in range(4)]
    ends = reader.end_offsets(tps)
    committed = {tp.partition: reader.committed(tp) for tp in tps}
    reader.close()
    assert sum(committed.values()) == 80
    assert all(committed[tp.partition] >= ends[tp] for tp in tps)  # Tansu's end offset can be lower
