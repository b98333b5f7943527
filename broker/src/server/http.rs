//! HTTP: `/health` and `/metrics` (Prometheus text format).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::cluster::TopicManager;
use crate::group::coordinator::Coordinator;
use crate::storage::CleanerStats;

use super::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub topics: Arc<TopicManager>,
    pub metrics: Arc<Metrics>,
    pub cleaner: Arc<CleanerStats>,
    pub groups: Arc<Coordinator>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    // Reading every partition's log takes their locks: not on the runtime's workers.
    let body = tokio::task::spawn_blocking(move || {
        state
            .metrics
            .render(&state.topics, &state.cleaner, &state.groups)
    })
    .await
    .unwrap_or_else(|e| format!("# metrics unavailable: {e}\n"));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
