#!/usr/bin/env python3
"""kafka-python (2.2.21) against a running Fjord broker: admin client, producer, group.

Usage: kafka_python_check.py HOST:PORT   (the broker's Kafka listener)

Steps, each checked: create topic py-events (4 partitions); list and describe it;
describe and alter its retention.ms; produce 200 keyed records with acks=all; read them
with two consumers of group py-group in two threads, each committing synchronously after
every poll; the group's committed offsets equal the partitions' end offsets; the group is
listed and described; delete the topic and see it gone.

Exit status 0 when every check passes, 1 otherwise (one `FAIL:` line says which).
FJORD_CI_DEBUG=1 turns on kafka-python's debug logging (every request and response).
"""

import logging
import os
import sys
import threading
import time
import traceback

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import CommitFailedError

TOPIC = "py-events"
GROUP = "py-group"
PARTITIONS = 4
RECORDS = 200
RETENTION_MS = "86400000"
CONSUME_DEADLINE_S = 40


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def step(message):
    print(f"kafka-python: ok {message}", flush=True)


def wait_until(what, probe, timeout_s=15.0, interval_s=0.1):
    """Calls probe() until it returns a truthy value (returned); fails after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise CheckFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def errors_in(entries, name_key):
    """The (name, error_code, message) of every entry of a response with a non-zero code."""
    return [
        (e.get(name_key), e["error_code"], e.get("error_message"))
        for e in entries
        if e["error_code"] != 0
    ]


def topic_configs(admin):
    responses = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, TOPIC)]
    )
    resources = [
        r for response in responses for r in response.to_object()["resources"]
    ]
    check(
        len(resources) == 1 and resources[0]["resource_name"] == TOPIC,
        f"describe_configs({TOPIC}) answered for {[r['resource_name'] for r in resources]}",
    )
    resource = resources[0]
    check(
        resource["error_code"] == 0,
        f"describe_configs({TOPIC}): error {resource['error_code']} "
        f"{resource['error_message']!r}",
    )
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}


def admin_part(addr):
    admin = KafkaAdminClient(bootstrap_servers=addr, client_id="fjord-ci-admin")
    try:
        response = admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        entries = response.to_object()["topic_errors"]
        check(
            [e["topic"] for e in entries] == [TOPIC],
            f"create_topics answered for {entries}",
        )
        check(not errors_in(entries, "topic"), f"create_topics: {errors_in(entries, 'topic')}")
        step(f"create_topics {TOPIC} ({PARTITIONS} partitions)")

        wait_until(f"list_topics() to contain {TOPIC}", lambda: TOPIC in admin.list_topics())
        described = admin.describe_topics([TOPIC])
        check(
            len(described) == 1 and described[0]["error_code"] == 0,
            f"describe_topics([{TOPIC}]) = {described}",
        )
        partitions = sorted(p["partition"] for p in described[0]["partitions"])
        check(
            partitions == list(range(PARTITIONS)),
            f"describe_topics: {TOPIC} has partitions {partitions}, expected 0..{PARTITIONS - 1}",
        )
        step("list_topics, describe_topics")

        configs = topic_configs(admin)
        check(
            "retention.ms" in configs,
            f"describe_configs({TOPIC}) has no retention.ms; keys: {sorted(configs)}",
        )
        before = configs["retention.ms"]
        response = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, TOPIC, {"retention.ms": RETENTION_MS})]
        )
        entries = response.to_object()["resources"]
        check(
            [e["resource_name"] for e in entries] == [TOPIC],
            f"alter_configs answered for {entries}",
        )
        check(
            not errors_in(entries, "resource_name"),
            f"alter_configs: {errors_in(entries, 'resource_name')}",
        )
        after = topic_configs(admin).get("retention.ms")
        check(
            after == RETENTION_MS,
            f"after alter_configs retention.ms={RETENTION_MS}, describe_configs shows {after!r}",
        )
        step(f"describe_configs, alter_configs (retention.ms {before} -> {after})")
    finally:
        admin.close()


def produce_part(addr):
    """Returns {(partition, offset): key} of the records produced."""
    producer = KafkaProducer(
        bootstrap_servers=addr,
        client_id="fjord-ci-producer",
        acks="all",
        compression_type="gzip",
        linger_ms=5,
        key_serializer=str.encode,
        value_serializer=str.encode,
    )
    try:
        futures = [
            (f"key-{i}", producer.send(TOPIC, key=f"key-{i}", value=f"value-{i}"))
            for i in range(RECORDS)
        ]
        producer.flush(timeout=30)
        produced = {}
        for key, future in futures:
            metadata = future.get(timeout=10)
            check(
                metadata.topic == TOPIC and 0 <= metadata.partition < PARTITIONS,
                f"record {key}: metadata {metadata}",
            )
            check(metadata.offset >= 0, f"record {key}: offset {metadata.offset}")
            where = (metadata.partition, metadata.offset)
            check(where not in produced, f"records {produced.get(where)} and {key} both at {where}")
            produced[where] = key
    finally:
        producer.close(timeout=10)
    per_partition = {}
    for partition, offset in produced:
        per_partition.setdefault(partition, []).append(offset)
    for partition, offsets in per_partition.items():
        check(
            sorted(offsets) == list(range(len(offsets))),
            f"partition {partition}: offsets of the produced records are {sorted(offsets)}, "
            f"expected 0..{len(offsets) - 1}",
        )
    check(
        len(per_partition) == PARTITIONS,
        f"{RECORDS} keyed records landed in partitions {sorted(per_partition)} only",
    )
    counts = {p: len(o) for p, o in sorted(per_partition.items())}
    step(f"produced {RECORDS} records with acks=all, per partition {counts}")
    return produced


class GroupMember(threading.Thread):
    """Polls, commits synchronously after every poll that returned records, and counts a
    record only once its offset is committed. Stops when the group has committed all."""

    def __init__(self, name, addr, shared):
        super().__init__(name=name, daemon=True)
        self.shared = shared
        self.error = None
        self.read = 0
        self.assigned = set()
        self.consumer = KafkaConsumer(
            TOPIC,
            bootstrap_servers=addr,
            client_id=name,
            group_id=GROUP,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=1000,
            key_deserializer=bytes.decode,
            value_deserializer=bytes.decode,
        )

    def run(self):
        try:
            deadline = time.monotonic() + CONSUME_DEADLINE_S
            while not self.shared["done"].is_set() and time.monotonic() < deadline:
                batches = self.consumer.poll(timeout_ms=200)
                self.assigned |= {tp.partition for tp in self.consumer.assignment()}
                records = [r for batch in batches.values() for r in batch]
                if not records:
                    continue
                self.read += len(records)
                try:
                    self.consumer.commit()
                except CommitFailedError as e:
                    # A rebalance took the partitions away: their new owner reads the
                    # records again from the last committed offsets.
                    print(f"kafka-python: {self.name}: commit failed ({e}); re-reading", flush=True)
                    continue
                with self.shared["lock"]:
                    for r in records:
                        self.shared["committed"].setdefault((r.partition, r.offset), (r.key, r.value))
                    if len(self.shared["committed"]) >= RECORDS:
                        self.shared["done"].set()
        except Exception as e:  # reported by the main thread
            self.error = e
            traceback.print_exc()
        finally:
            self.consumer.close(autocommit=False)


def consume_part(addr, produced):
    shared = {"lock": threading.Lock(), "done": threading.Event(), "committed": {}}
    members = [GroupMember(f"py-consumer-{n}", addr, shared) for n in (1, 2)]
    for member in members:
        member.start()
    for member in members:
        member.join(CONSUME_DEADLINE_S + 20)
        check(not member.is_alive(), f"{member.name} did not stop")
        check(member.error is None, f"{member.name} failed: {member.error!r}")
    committed = shared["committed"]
    check(
        len(committed) == RECORDS,
        f"the group committed {len(committed)} of {RECORDS} records within "
        f"{CONSUME_DEADLINE_S} s",
    )
    check(
        set(committed) == set(produced),
        f"consumed (partition, offset) differ from produced: only consumed "
        f"{sorted(set(committed) - set(produced))[:10]}, only produced "
        f"{sorted(set(produced) - set(committed))[:10]}",
    )
    wrong = [
        (where, produced[where], kv)
        for where, kv in committed.items()
        if kv != (produced[where], "value-" + produced[where][len("key-"):])
    ]
    check(not wrong, f"records read back differ from those produced: {wrong[:10]}")
    for member in members:
        check(member.assigned, f"{member.name} was never assigned a partition")
    step(
        "group "
        + GROUP
        + " read all "
        + str(RECORDS)
        + " records: "
        + ", ".join(
            f"{m.name} read {m.read} from partitions {sorted(m.assigned)}" for m in members
        )
    )


def group_admin_part(addr):
    consumer = KafkaConsumer(
        bootstrap_servers=addr, client_id="fjord-ci-offsets", enable_auto_commit=False
    )
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        end = consumer.end_offsets(partitions)
    finally:
        consumer.close()
    check(
        sum(end.values()) == RECORDS,
        f"end_offsets {end} do not add up to {RECORDS}",
    )
    admin = KafkaAdminClient(bootstrap_servers=addr, client_id="fjord-ci-admin-2")
    try:
        offsets = admin.list_consumer_group_offsets(GROUP)
        got = {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == TOPIC}
        want = {tp.partition: offset for tp, offset in end.items()}
        check(
            got == want,
            f"list_consumer_group_offsets({GROUP}) = {got}, expected the end offsets {want}",
        )
        step(f"committed offsets equal the end offsets {dict(sorted(want.items()))}")

        descriptions = admin.describe_consumer_groups([GROUP])
        check(
            len(descriptions) == 1 and descriptions[0].group == GROUP,
            f"describe_consumer_groups([{GROUP}]) = {descriptions}",
        )
        description = descriptions[0]
        check(
            description.error_code == 0 and description.state == "Empty"
            and not description.members,
            f"after both consumers closed, {GROUP} is described as {description}",
        )
        groups = admin.list_consumer_groups()
        check(
            GROUP in [g[0] for g in groups],
            f"list_consumer_groups() = {groups} lacks {GROUP}",
        )
        step(f"describe_consumer_groups (state {description.state}), list_consumer_groups")

        response = admin.delete_topics([TOPIC])
        entries = response.to_object()["topic_error_codes"]
        check(
            [e["topic"] for e in entries] == [TOPIC] and entries[0]["error_code"] == 0,
            f"delete_topics([{TOPIC}]) = {entries}",
        )
        wait_until(
            f"list_topics() to no longer contain {TOPIC}",
            lambda: TOPIC not in admin.list_topics(),
        )
        step(f"delete_topics {TOPIC}")
    finally:
        admin.close()


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    addr = argv[1]
    level = logging.DEBUG if os.environ.get("FJORD_CI_DEBUG") == "1" else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(threadName)s %(name)s: %(message)s"
    )
    started = time.monotonic()
    try:
        admin_part(addr)
        produced = produce_part(addr)
        consume_part(addr, produced)
        group_admin_part(addr)
    except CheckFailed as e:
        print(f"kafka-python: FAIL: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # a KafkaError, or an assertion inside kafka-python
        traceback.print_exc()
        print(f"kafka-python: FAIL: {e!r}", file=sys.stderr, flush=True)
        return 1
    print(f"kafka-python: all checks passed in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
