//! The Kafka admin APIs against a real Kafka admin client (librdkafka's, through
//! `rdkafka`): create, describe, alter and delete topics, grow them, delete records; and,
//! through `kafka-protocol` frames, what librdkafka cannot send (IncrementalAlterConfigs,
//! DescribeCluster, OffsetForLeaderEpoch, DeleteTopics by id). The CLI sees every change.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::alter_configs_request::{
    AlterConfigsResource as LegacyResource, AlterableConfig as LegacyConfig,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeClusterRequest,
    DescribeConfigsRequest, IncrementalAlterConfigsRequest, MetadataRequest,
    OffsetForLeaderEpochRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::{BrokerProcess, fjord_ok};

const TIMEOUT: Duration = Duration::from_secs(30);

fn admin(broker: &BrokerProcess) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_addr.to_string())
        .create()
        .expect("create admin client")
}

fn options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(TIMEOUT))
}

fn consumer(broker: &BrokerProcess) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_addr.to_string())
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create consumer")
}

fn producer(broker: &BrokerProcess) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_addr.to_string())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("create producer")
}

/// The partition count Metadata reports for `topic`, or `None` when it is not listed.
fn partitions_in_metadata(broker: &BrokerProcess, topic: &str) -> Option<usize> {
    let metadata = consumer(broker)
        .fetch_metadata(None, TIMEOUT)
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
}

/// `fjord topic describe`'s config lines, as `key=value[ (override)]`.
fn described_configs(broker: &BrokerProcess, topic: &str) -> Vec<String> {
    let out = fjord_ok(broker, &["topic", "describe", topic], b"");
    out.lines()
        .skip_while(|l| *l != "Configs:")
        .skip(1)
        .map(|l| l.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_client_creates_describes_alters_and_deletes_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let admin = admin(&broker);

    let orders =
        NewTopic::new("orders", 3, TopicReplication::Fixed(1)).set("retention.ms", "60000");
    let defaulted = NewTopic::new("defaulted", -1, TopicReplication::Fixed(-1));
    let created = admin
        .create_topics([&orders, &defaulted], &options())
        .await
        .unwrap();
    assert_eq!(created, vec![Ok("orders".into()), Ok("defaulted".into())]);

    // Refusals, one per topic.
    let again = NewTopic::new("orders", 1, TopicReplication::Fixed(1));
    let replicated = NewTopic::new("replicated", 1, TopicReplication::Fixed(3));
    let bad_name = NewTopic::new("bad name!", 1, TopicReplication::Fixed(1));
    let bad_config =
        NewTopic::new("bad-config", 1, TopicReplication::Fixed(1)).set("retention.ms", "soon");
    let refused = admin
        .create_topics([&again, &replicated, &bad_name, &bad_config], &options())
        .await
        .unwrap();
    assert_eq!(
        refused,
        vec![
            Err(("orders".into(), RDKafkaErrorCode::TopicAlreadyExists)),
            Err((
                "replicated".into(),
                RDKafkaErrorCode::InvalidReplicationFactor
            )),
            Err(("bad name!".into(), RDKafkaErrorCode::InvalidTopic)),
            Err(("bad-config".into(), RDKafkaErrorCode::InvalidConfig)),
        ]
    );
    // validate_only creates nothing.
    let ghost = NewTopic::new("ghost", 2, TopicReplication::Fixed(1));
    let validated = admin
        .create_topics([&ghost], &options().validate_only(true))
        .await
        .unwrap();
    assert_eq!(validated, vec![Ok("ghost".into())]);
    assert_eq!(partitions_in_metadata(&broker, "ghost"), None);

    // Kafka and the CLI see the same topics.
    assert_eq!(partitions_in_metadata(&broker, "orders"), Some(3));
    assert_eq!(partitions_in_metadata(&broker, "defaulted"), Some(1));
    let listed = fjord_ok(&broker, &["topic", "list"], b"");
    let listed: Vec<&str> = listed.lines().collect();
    assert!(
        listed.contains(&"orders") && listed.contains(&"defaulted"),
        "{listed:?}"
    );
    let described = fjord_ok(&broker, &["topic", "describe", "orders"], b"");
    assert!(described.contains("Partitions: 3"), "{described}");
    assert!(
        described_configs(&broker, "orders").contains(&"retention.ms=60000 (override)".into()),
        "{described}"
    );

    // DescribeConfigs: the override and the defaults.
    let described = admin
        .describe_configs(
            [
                &ResourceSpecifier::Topic("orders"),
                &ResourceSpecifier::Topic("nope"),
            ],
            &options(),
        )
        .await
        .unwrap();
    let configs = described[0].as_ref().expect("orders' configs");
    assert_eq!(configs.entries.len(), 13);
    let retention = configs.get("retention.ms").unwrap();
    assert_eq!(retention.value.as_deref(), Some("60000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    assert!(!retention.is_default && !retention.is_read_only && !retention.is_sensitive);
    let policy = configs.get("cleanup.policy").unwrap();
    assert_eq!(policy.value.as_deref(), Some("delete"));
    assert_eq!(policy.source, ConfigSource::Default);
    assert!(policy.is_default);
    // rdkafka 0.38 drops a resource's error code (the raw test below checks it).
    assert!(described[1].as_ref().is_ok_and(|r| r.entries.is_empty()));
    let metadata = consumer(&broker).fetch_metadata(None, TIMEOUT).unwrap();
    let node_id = metadata.brokers()[0].id();
    let broker_configs = admin
        .describe_configs([&ResourceSpecifier::Broker(node_id)], &options())
        .await
        .unwrap();
    let broker_configs = broker_configs[0].as_ref().expect("broker configs");
    let log_retention = broker_configs
        .get("log.retention.ms")
        .expect("log.retention.ms");
    assert_eq!(log_retention.value.as_deref(), Some("604800000"));

    // AlterConfigs replaces the whole set of overrides.
    let compact =
        AlterConfig::new(ResourceSpecifier::Topic("orders")).set("cleanup.policy", "compact");
    let altered = admin.alter_configs([&compact], &options()).await.unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    let configs = described_configs(&broker, "orders");
    assert!(
        configs.contains(&"cleanup.policy=compact (override)".into()),
        "{configs:?}"
    );
    assert!(
        configs.contains(&"retention.ms=604800000".into()),
        "{configs:?}"
    );
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic("orders")], &options())
        .await
        .unwrap();
    let configs = described[0].as_ref().unwrap();
    assert_eq!(
        configs.get("cleanup.policy").unwrap().source,
        ConfigSource::DynamicTopic
    );
    assert_eq!(
        configs.get("retention.ms").unwrap().source,
        ConfigSource::Default
    );

    // Bad values, unknown keys, validate_only and internal topics change nothing.
    let bad_value =
        AlterConfig::new(ResourceSpecifier::Topic("orders")).set("retention.ms", "soon");
    let unknown_key = AlterConfig::new(ResourceSpecifier::Topic("defaulted")).set("no.such", "1");
    let internal =
        AlterConfig::new(ResourceSpecifier::Topic("__consumer_offsets")).set("retention.ms", "1");
    let missing = AlterConfig::new(ResourceSpecifier::Topic("nope")).set("retention.ms", "1");
    // rdkafka 0.38 drops each resource's error code (the raw test below checks them):
    // check that nothing changed.
    admin
        .alter_configs([&bad_value, &unknown_key, &internal, &missing], &options())
        .await
        .unwrap();
    let defaulted = described_configs(&broker, "defaulted");
    assert!(
        !defaulted.iter().any(|c| c.ends_with("(override)")),
        "{defaulted:?}"
    );
    let offsets = described_configs(&broker, "__consumer_offsets");
    assert!(
        !offsets.contains(&"retention.ms=1 (override)".into()),
        "{offsets:?}"
    );
    let dry = AlterConfig::new(ResourceSpecifier::Topic("orders")).set("retention.ms", "1000");
    let validated = admin
        .alter_configs([&dry], &options().validate_only(true))
        .await
        .unwrap();
    assert!(validated[0].is_ok(), "{validated:?}");
    let configs = described_configs(&broker, "orders");
    assert!(
        configs.contains(&"cleanup.policy=compact (override)".into()),
        "{configs:?}"
    );
    assert!(
        configs.contains(&"retention.ms=604800000".into()),
        "{configs:?}"
    );

    // DeleteTopics.
    let deleted = admin
        .delete_topics(&["defaulted", "nope", "__consumer_offsets"], &options())
        .await
        .unwrap();
    assert_eq!(
        deleted,
        vec![
            Ok("defaulted".into()),
            Err(("nope".into(), RDKafkaErrorCode::UnknownTopicOrPartition)),
            Err((
                "__consumer_offsets".into(),
                RDKafkaErrorCode::TopicAuthorizationFailed
            )),
        ]
    );
    assert_eq!(partitions_in_metadata(&broker, "defaulted"), None);
    assert!(partitions_in_metadata(&broker, "__consumer_offsets").is_some());
    let listed = fjord_ok(&broker, &["topic", "list"], b"");
    assert!(!listed.lines().any(|l| l == "defaulted"), "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_partitions_grows_a_topic_that_clients_then_produce_to() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let admin = admin(&broker);
    let topic = NewTopic::new("grow", 1, TopicReplication::Fixed(1));
    admin.create_topics([&topic], &options()).await.unwrap();

    let grown = admin
        .create_partitions([&NewPartitions::new("grow", 3)], &options())
        .await
        .unwrap();
    assert_eq!(grown, vec![Ok("grow".into())]);
    let dry = NewPartitions::new("grow", 5);
    let validated = admin
        .create_partitions([&dry], &options().validate_only(true))
        .await
        .unwrap();
    assert_eq!(validated, vec![Ok("grow".into())]);
    let shrink = NewPartitions::new("grow", 2);
    let missing = NewPartitions::new("nope", 2);
    let internal = NewPartitions::new("__consumer_offsets", 100);
    let refused = admin
        .create_partitions([&shrink, &missing, &internal], &options())
        .await
        .unwrap();
    assert_eq!(
        refused,
        vec![
            Err(("grow".into(), RDKafkaErrorCode::InvalidPartitions)),
            Err(("nope".into(), RDKafkaErrorCode::UnknownTopicOrPartition)),
            Err((
                "__consumer_offsets".into(),
                RDKafkaErrorCode::TopicAuthorizationFailed
            )),
        ]
    );

    assert_eq!(partitions_in_metadata(&broker, "grow"), Some(3));
    let described = fjord_ok(&broker, &["topic", "describe", "grow"], b"");
    assert!(described.contains("Partitions: 3"), "{described}");

    let producer = producer(&broker);
    let delivered = producer
        .send(
            FutureRecord::<(), str>::to("grow")
                .partition(2)
                .payload("new"),
            TIMEOUT,
        )
        .await
        .expect("delivered to the new partition");
    assert_eq!((delivered.partition, delivered.offset), (2, 0));
    let (low, high) = consumer(&broker)
        .fetch_watermarks("grow", 2, TIMEOUT)
        .unwrap();
    assert_eq!((low, high), (0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_records_moves_the_low_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let admin = admin(&broker);
    let topic = NewTopic::new("trim", 2, TopicReplication::Fixed(1));
    admin.create_topics([&topic], &options()).await.unwrap();
    let producer = producer(&broker);
    for i in 0..10 {
        for p in 0..2 {
            let value = format!("record {i}");
            let record = FutureRecord::<(), str>::to("trim")
                .partition(p)
                .payload(&value);
            producer.send(record, TIMEOUT).await.expect("delivered");
        }
    }

    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("trim", 0, Offset::Offset(4))
        .unwrap();
    offsets
        .add_partition_offset("trim", 1, Offset::End)
        .unwrap();
    let deleted = admin.delete_records(&offsets, &options()).await.unwrap();
    let low = |p| deleted.find_partition("trim", p).unwrap().offset();
    assert_eq!((low(0), low(1)), (Offset::Offset(4), Offset::Offset(10)));
    let consumer = consumer(&broker);
    assert_eq!(
        consumer.fetch_watermarks("trim", 0, TIMEOUT).unwrap(),
        (4, 10)
    );
    assert_eq!(
        consumer.fetch_watermarks("trim", 1, TIMEOUT).unwrap(),
        (10, 10)
    );
    let described = fjord_ok(&broker, &["topic", "describe", "trim"], b"");
    let row: Vec<&str> = described
        .lines()
        .find(|l| l.trim_start().starts_with("0 "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], &["0", "4", "10"], "{described}");

    // Beyond the high watermark: refused, nothing moves. Below the start: nothing moves.
    let mut beyond = TopicPartitionList::new();
    beyond
        .add_partition_offset("trim", 0, Offset::Offset(11))
        .unwrap();
    match admin.delete_records(&beyond, &options()).await {
        Ok(result) => {
            let error = result
                .find_partition("trim", 0)
                .unwrap()
                .error()
                .unwrap_err();
            assert_eq!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::OffsetOutOfRange)
            );
        }
        Err(e) => assert_eq!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::OffsetOutOfRange)
        ),
    }
    let mut below = TopicPartitionList::new();
    below
        .add_partition_offset("trim", 0, Offset::Offset(2))
        .unwrap();
    let kept = admin.delete_records(&below, &options()).await.unwrap();
    assert_eq!(
        kept.find_partition("trim", 0).unwrap().offset(),
        Offset::Offset(4)
    );
    assert_eq!(
        consumer.fetch_watermarks("trim", 0, TIMEOUT).unwrap(),
        (4, 10)
    );
}

/// Sends `request` at `version` on `stream` and decodes the response.
pub fn call<R: Request>(stream: &mut TcpStream, version: i16, request: &R) -> R::Response {
    stream
        .write_all(&request_frame(7, version, request))
        .unwrap();
    let (correlation_id, response) = read_answer::<R>(stream, version);
    assert_eq!(correlation_id, 7);
    response
}

/// `request` at `version` as a size-prefixed frame with `correlation_id`.
pub fn request_frame<R: Request>(correlation_id: i32, version: i16, request: &R) -> BytesMut {
    let mut header = RequestHeader::default();
    header.request_api_key = R::KEY;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("kafka-admin-test"));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, R::header_version(version))
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    frame
}

/// Reads the next response frame, as a response to an `R` at `version`: (its correlation
/// id, the response).
pub fn read_answer<R: Request>(stream: &mut TcpStream, version: i16) -> (i32, R::Response) {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    let mut response = bytes::Bytes::from(response);
    let header =
        ResponseHeader::decode(&mut response, R::Response::header_version(version)).unwrap();
    let decoded = R::Response::decode(&mut response, version).unwrap();
    assert!(!response.has_remaining(), "trailing bytes in the response");
    (header.correlation_id, decoded)
}

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_requests_at_the_newest_versions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut stream = TcpStream::connect(broker.kafka_addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();

    // CreateTopics v7: the counts, every config with its source, and the topic id.
    let mut topic = CreatableTopic::default();
    topic.name = topic_name("raw");
    topic.num_partitions = 2;
    topic.replication_factor = -1;
    let mut config = CreatableTopicConfig::default();
    config.name = str_bytes("segment.ms");
    config.value = Some(str_bytes("3600000"));
    topic.configs = vec![config];
    let mut request = CreateTopicsRequest::default();
    request.topics = vec![topic];
    let created = call(&mut stream, 7, &request);
    let result = &created.topics[0];
    assert_eq!(result.error_code, 0, "{:?}", result.error_message);
    assert_eq!((result.num_partitions, result.replication_factor), (2, 1));
    let configs = result.configs.as_ref().unwrap();
    assert_eq!(configs.len(), 13);
    let segment_ms = configs
        .iter()
        .find(|c| c.name.as_str() == "segment.ms")
        .unwrap();
    assert_eq!(segment_ms.value.as_deref(), Some("3600000"));
    assert_eq!(segment_ms.config_source, 1);
    let mut metadata = MetadataRequest::default();
    metadata.topics = None;
    let listed = call(&mut stream, 12, &metadata);
    let id = listed
        .topics
        .iter()
        .find(|t| t.name == Some(topic_name("raw")))
        .unwrap()
        .topic_id;
    assert_eq!(result.topic_id, id);
    assert!(!id.is_nil());

    // IncrementalAlterConfigs v1: set, append to a list, refuse appending to a number.
    let alter = |ops: &[(&str, i8, Option<&str>)]| {
        let mut resource = AlterConfigsResource::default();
        resource.resource_type = 2;
        resource.resource_name = str_bytes("raw");
        resource.configs = ops
            .iter()
            .map(|&(name, op, value)| {
                let mut config = AlterableConfig::default();
                config.name = str_bytes(name);
                config.config_operation = op;
                config.value = value.map(str_bytes);
                config
            })
            .collect();
        let mut request = IncrementalAlterConfigsRequest::default();
        request.resources = vec![resource];
        request
    };
    let altered = call(
        &mut stream,
        1,
        &alter(&[
            ("retention.ms", 0, Some("1000")),
            ("cleanup.policy", 2, Some("compact")),
            ("segment.ms", 1, None),
        ]),
    );
    assert_eq!(altered.responses[0].error_code, 0);
    let refused = call(&mut stream, 1, &alter(&[("retention.ms", 2, Some("5"))]));
    assert_eq!(refused.responses[0].error_code, 40);
    assert!(refused.responses[0].error_message.is_some());
    let configs = described_configs(&broker, "raw");
    assert!(
        configs.contains(&"cleanup.policy=compact,delete (override)".into()),
        "{configs:?}"
    );
    assert!(
        configs.contains(&"retention.ms=1000 (override)".into()),
        "{configs:?}"
    );
    assert!(
        !configs.iter().any(|c| c.starts_with("segment.ms=3600000")),
        "{configs:?}"
    );
    let subtracted = call(
        &mut stream,
        1,
        &alter(&[("cleanup.policy", 3, Some("delete"))]),
    );
    assert_eq!(subtracted.responses[0].error_code, 0);
    let configs = described_configs(&broker, "raw");
    assert!(
        configs.contains(&"cleanup.policy=compact (override)".into()),
        "{configs:?}"
    );

    // DescribeConfigs v4, only the keys asked for.
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = str_bytes("raw");
    resource.configuration_keys = Some(vec![str_bytes("retention.ms"), str_bytes("no.such")]);
    let mut missing = DescribeConfigsResource::default();
    missing.resource_type = 2;
    missing.resource_name = str_bytes("nope");
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![resource, missing];
    let described = call(&mut stream, 4, &request);
    assert_eq!(described.results[1].error_code, 3); // UNKNOWN_TOPIC_OR_PARTITION
    let entries: HashMap<String, Option<String>> = described.results[0]
        .configs
        .iter()
        .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
        .collect();
    assert_eq!(
        entries,
        HashMap::from([("retention.ms".to_owned(), Some("1000".to_owned()))])
    );

    // AlterConfigs v2: the whole set of overrides replaced; per-resource refusals.
    let replace = |name: &str, resource_type: i8, key: &str, value: &str| {
        let mut config = LegacyConfig::default();
        config.name = str_bytes(key);
        config.value = Some(str_bytes(value));
        let mut resource = LegacyResource::default();
        resource.resource_type = resource_type;
        resource.resource_name = str_bytes(name);
        resource.configs = vec![config];
        resource
    };
    // One resource per request: a resource named twice is INVALID_REQUEST (42).
    let mut twice = AlterConfigsRequest::default();
    twice.resources = vec![
        replace("raw", 2, "retention.ms", "1"),
        replace("raw", 2, "retention.ms", "2"),
    ];
    let codes: Vec<i16> = call(&mut stream, 2, &twice)
        .responses
        .iter()
        .map(|r| r.error_code)
        .collect();
    assert_eq!(codes, vec![42, 42]);
    let refusals = [
        (replace("raw", 2, "retention.ms", "soon"), 40),
        (replace("raw", 2, "no.such", "1"), 40),
        (replace("__consumer_offsets", 2, "retention.ms", "1"), 29),
        (replace("nope", 2, "retention.ms", "1"), 3),
        (replace("1", 4, "log.retention.ms", "1"), 42),
    ];
    for (resource, code) in refusals {
        let mut request = AlterConfigsRequest::default();
        request.resources = vec![resource];
        let refused = call(&mut stream, 2, &request);
        assert_eq!(refused.responses[0].error_code, code, "{refused:?}");
        assert!(refused.responses[0].error_message.is_some());
    }
    let mut request = AlterConfigsRequest::default();
    request.resources = vec![replace("raw", 2, "segment.ms", "60000")];
    assert_eq!(call(&mut stream, 2, &request).responses[0].error_code, 0);
    let configs = described_configs(&broker, "raw");
    let overrides: Vec<&String> = configs
        .iter()
        .filter(|c| c.ends_with("(override)"))
        .collect();
    assert_eq!(
        overrides,
        vec!["segment.ms=60000 (override)"],
        "{configs:?}"
    );

    // DescribeCluster v1: this broker, also the controller.
    let cluster = call(&mut stream, 1, &DescribeClusterRequest::default());
    assert_eq!(cluster.error_code, 0);
    assert_eq!(cluster.cluster_id.as_str(), "fjord");
    assert_eq!(cluster.brokers.len(), 1);
    assert_eq!(cluster.brokers[0].port, i32::from(broker.kafka_addr.port()));
    assert_eq!(cluster.controller_id, cluster.brokers[0].broker_id);

    // OffsetForLeaderEpoch v4: epoch 0 ends at the high watermark.
    let producer = producer(&broker);
    for _ in 0..3 {
        let record = FutureRecord::<(), str>::to("raw").partition(1).payload("x");
        producer.send(record, TIMEOUT).await.expect("delivered");
    }
    let epochs = |partition: i32, current: i32, epoch: i32| {
        let mut p = OffsetForLeaderPartition::default();
        p.partition = partition;
        p.current_leader_epoch = current;
        p.leader_epoch = epoch;
        let mut topic = OffsetForLeaderTopic::default();
        topic.topic = topic_name("raw");
        topic.partitions = vec![p];
        let mut request = OffsetForLeaderEpochRequest::default();
        request.replica_id = (-1).into();
        request.topics = vec![topic];
        request
    };
    let mut answer = |request: OffsetForLeaderEpochRequest| {
        let response = call(&mut stream, 4, &request);
        let p = &response.topics[0].partitions[0];
        (p.error_code, p.leader_epoch, p.end_offset)
    };
    assert_eq!(answer(epochs(1, 0, 0)), (0, 0, 3));
    assert_eq!(answer(epochs(0, -1, 0)), (0, 0, 0));
    assert_eq!(answer(epochs(1, -1, 5)), (0, -1, -1));
    assert_eq!(answer(epochs(1, 3, 0)).0, 75); // UNKNOWN_LEADER_EPOCH
    assert_eq!(answer(epochs(9, -1, 0)).0, 3); // UNKNOWN_TOPIC_OR_PARTITION

    // DeleteTopics v6 by topic id.
    let mut by_id = DeleteTopicState::default();
    by_id.topic_id = id;
    let mut unknown = DeleteTopicState::default();
    unknown.topic_id = uuid::Uuid::from_u128(1);
    let mut request = DeleteTopicsRequest::default();
    request.topics = vec![by_id, unknown];
    let deleted = call(&mut stream, 6, &request);
    assert_eq!(deleted.responses[0].error_code, 0);
    assert_eq!(deleted.responses[0].name, Some(topic_name("raw")));
    assert_eq!(deleted.responses[1].error_code, 100); // UNKNOWN_TOPIC_ID
    let mut metadata = MetadataRequest::default();
    metadata.topics = None;
    let listed = call(&mut stream, 12, &metadata);
    assert!(
        !listed
            .topics
            .iter()
            .any(|t| t.name == Some(topic_name("raw")))
    );
}
