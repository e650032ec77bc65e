//! The HTTP side of the daemon on `metrics.listen`: Prometheus `/metrics`,
//! a cheap `/health` for load balancers and orchestrators, and a read-only
//! JSON view of the stats (`/api/v1/status`, `/api/v1/backends`,
//! `/api/v1/backends/{name}`), open to anyone who reaches the address; and
//! the control API, which changes the daemon's state and needs the bearer
//! token of `metrics.token`.
//!
//! - [`exposition`]: a snapshot in the OpenMetrics text format (pure).
//! - [`auth`]: the bearer token check.
//! - [`control`]: enable, disable, drain, register, unregister, reset.
//! - [`dashboard`]: the live page at `/`, compiled into the binary.

pub mod auth;
pub mod control;
pub mod dashboard;
pub mod exposition;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{FromRef, Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{BreakerState, Pool},
    clock,
    config::Secret,
    stats::source::StatsSource,
};
use auth::Token;

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
    state: ApiState,
}

/// What every handler may read: read-only ones take the [`StatsSource`],
/// control ones also the [`Token`].
#[derive(Clone, Debug)]
pub struct ApiState {
    source: Arc<StatsSource>,
    token: Token,
}

impl ApiState {
    /// Handlers over `source`; control calls need `token` (none refuses
    /// them all).
    #[must_use]
    pub fn new(source: Arc<StatsSource>, token: Option<Secret>) -> Self {
        Self {
            source,
            token: Token(token),
        }
    }
}

impl FromRef<ApiState> for Arc<StatsSource> {
    fn from_ref(state: &ApiState) -> Self {
        Arc::clone(&state.source)
    }
}

impl FromRef<ApiState> for Token {
    fn from_ref(state: &ApiState) -> Self {
        state.token.clone()
    }
}

impl ApiServer {
    /// Binds `addr`.
    ///
    /// # Errors
    /// The address cannot be bound (in use, not local, no permission).
    pub async fn bind(addr: SocketAddr, state: ApiState) -> Result<Self, ApiError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiError::Bind { addr, source })?;
        Ok(Self { listener, state })
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
        let app = router(self.state);
        if let Err(error) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(%error, "metrics server stopped");
        }
    }
}

/// Every route over `state`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/api/v1/status", get(status))
        .route("/api/v1/backends", get(backends).post(control::register))
        .route(
            "/api/v1/backends/{name}",
            get(backend).delete(control::unregister),
        )
        .route("/api/v1/backends/{name}/disable", post(control::disable))
        .route("/api/v1/backends/{name}/enable", post(control::enable))
        .route("/api/v1/backends/{name}/drain", post(control::drain))
        .route("/api/v1/reset", post(control::reset))
        .with_state(state)
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

/// Selectable backends of `pool` whose breaker lets traffic through at
/// `now`: closed, unknown and half-open ones, and open ones whose recovery
/// interval is over (the next attempt is a trial).
fn admitting(pool: &Pool, now: Instant) -> usize {
    pool.backends()
        .iter()
        .filter(|backend| {
            backend.is_selectable()
                && (backend.state() == BreakerState::HalfOpen || backend.allows(now).admitted())
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
