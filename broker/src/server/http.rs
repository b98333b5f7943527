//! HTTP: `/health` and `/metrics` (Prometheus text format).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::cluster::TopicManager;
use crate::storage::CleanerStats;

use super::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub topics: Arc<TopicManager>,
    pub metrics: Arc<Metrics>,
    pub cleaner: Arc<CleanerStats>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let body = state.metrics.render(&state.topics, &state.cleaner);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
