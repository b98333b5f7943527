//! DescribeCluster (KIP-700): this broker, the cluster id Metadata reports, and this
//! broker as the controller. Only the broker endpoints are described (endpoint type 1);
//! asking for the controllers' (2, KIP-919) is UNSUPPORTED_ENDPOINT_TYPE, as a Kafka
//! broker answers. Authorized operations are not computed (left at "not requested").

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

use super::KafkaService;
use super::metadata::CLUSTER_ID;

/// Kafka's endpoint type of brokers.
const ENDPOINT_BROKERS: i8 = 1;

impl KafkaService {
    pub(super) fn describe_cluster(
        &self,
        request: DescribeClusterRequest,
        version: i16,
    ) -> DescribeClusterResponse {
        let mut response = DescribeClusterResponse::default();
        response.cluster_id = StrBytes::from_static_str(CLUSTER_ID);
        response.endpoint_type = request.endpoint_type;
        // v0 has no endpoint type: it always means brokers.
        if version >= 1 && request.endpoint_type != ENDPOINT_BROKERS {
            response.error_code = ResponseError::UnsupportedEndpointType.code();
            response.error_message = Some(StrBytes::from_string(format!(
                "endpoint type {} is not served: this is a broker",
                request.endpoint_type
            )));
            return response;
        }
        response.controller_id = BrokerId(self.node_id);
        let mut broker = DescribeClusterBroker::default();
        broker.broker_id = BrokerId(self.node_id);
        broker.host = StrBytes::from_string(self.advertised_host.clone());
        broker.port = self.advertised_port;
        response.brokers = vec![broker];
        response
    }
}
