//! ApiVersions: the APIs and versions of [`SUPPORTED`](super::SUPPORTED).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

fn api_keys() -> Vec<ApiVersion> {
    super::SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            let mut version = ApiVersion::default();
            version.api_key = api as i16;
            version.min_version = min;
            version.max_version = max;
            version
        })
        .collect()
}

/// The answer to a supported version.
pub fn handle() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = api_keys();
    response
}

/// The answer, at version 0, to an ApiVersions request at a version this broker does not
/// know: UNSUPPORTED_VERSION with the supported list, from which the client picks a
/// version and asks again (KIP-511).
pub fn unsupported_version() -> ApiVersionsResponse {
    let mut response = handle();
    response.error_code = ResponseError::UnsupportedVersion.code();
    response
}
