//! The HTTP side of the daemon on `metrics.listen`: Prometheus `/metrics`,
//! a cheap `/health` for load balancers and orchestrators, and a read-only
//! JSON view of the stats (`/api/v1/status`, `/api/v1/backends`,
//! `/api/v1/backends/{name}`). Nothing here changes the daemon's state.
//!
//! - [`exposition`]: a snapshot in the OpenMetrics text format (pure).

pub mod exposition;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{BreakerState, Pool},
    clock,
    stats::source::StatsSource,
};

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {addr} (metrics.listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound server, not yet serving: binding first lets the daemon fail at
/// startup, before it says it runs, when the address is taken.
#[derive(Debug)]
pub struct ApiServer {
    listener: TcpListener,
    source: Arc<StatsSource>,
}

impl ApiServer {
    /// Binds `addr`.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not local, no permission).
    pub async fn bind(addr: SocketAddr, source: Arc<StatsSource>) -> Result<Self, ApiError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiError::Bind { addr, source })?;
        Ok(Self { listener, source })
    }

    /// The bound address (the real port when `metrics.listen` said 0).
    ///
    /// # Errors
    /// The socket's name cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; requests in flight then finish.
    pub async fn serve(self, shutdown: CancellationToken) {
        let app = router(self.source);
        if let Err(error) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(%error, "metrics server stopped");
        }
    }
}

/// Every route over `source`.
pub fn router(source: Arc<StatsSource>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/api/v1/status", get(status))
        .route("/api/v1/backends", get(backends))
        .route("/api/v1/backends/{name}", get(backend))
        .with_state(source)
}

async fn metrics(State(source): State<Arc<StatsSource>>) -> Response {
    let scrape = source.scrape(clock::now(), clock::wall_now());
    match exposition::encode(scrape) {
        Ok(body) => ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot encode /metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// 200 while some backend would take a connection, 503 otherwise. Reads
/// the pool's breakers only: no snapshot, no engine.
async fn health(State(source): State<Arc<StatsSource>>) -> (StatusCode, String) {
    let pool = source.registry().pool();
    let admitting = admitting(&pool, clock::now());
    if admitting > 0 || (pool.panic_mode() && !pool.is_empty()) {
        (
            StatusCode::OK,
            format!("ok: {admitting} of {} backends admit traffic\n", pool.len()),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unavailable: none of {} backends admit traffic\n",
                pool.len()
            ),
        )
    }
}

/// Backends of `pool` whose breaker lets traffic through at `now`: closed,
/// unknown and half-open ones, and open ones whose recovery interval is over
/// (the next attempt is a trial).
fn admitting(pool: &Pool, now: Instant) -> usize {
    pool.backends()
        .iter()
        .filter(|backend| {
            backend.state() == BreakerState::HalfOpen || backend.allows(now).admitted()
        })
        .count()
}

async fn status(State(source): State<Arc<StatsSource>>) -> Response {
    Json(source.snapshot_now()).into_response()
}

async fn backends(State(source): State<Arc<StatsSource>>) -> Response {
    Json(source.snapshot_now().backends).into_response()
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

async fn backend(State(source): State<Arc<StatsSource>>, Path(name): Path<String>) -> Response {
    let found = source
        .snapshot_now()
        .backends
        .into_iter()
        .find(|backend| backend.name == name);
    match found {
        Some(backend) => Json(backend).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(ErrorBody {
                error: format!("no backend named {name:?}"),
            }),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests;
