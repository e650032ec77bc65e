//! The control API: operator actions on a running daemon. Every call needs
//! [`Authorized`] (the bearer token of `metrics.token`), answers JSON (an
//! error is `{"error": "..."}`) and logs one info line with the action, the
//! backend and the outcome.
//!
//! - `POST /api/v1/backends/{name}/disable|enable|drain`: the operator's
//!   override ([`AdminState`]); selection honours it in
//!   [`crate::backend::Backend::is_selectable`].
//! - `POST /api/v1/backends`: registers a backend at run time.
//! - `DELETE /api/v1/backends/{name}`: unregisters it (it drains).
//! - `POST /api/v1/reset`: zeroes the counters.

use std::{str::FromStr, sync::Arc};

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ErrorBody, auth::Authorized};
use crate::{
    backend::{AdminState, BackendSpec, Origin, RegistryError},
    clock,
    config::HostPort,
    forward::BackendEngine,
    stats::source::StatsSource,
};

/// SOCKS5 (RFC 1929) carries username and password lengths in one byte.
const MAX_CREDENTIAL_LEN: usize = 255;
/// Names end up in URLs, logs and metric labels; keep them short.
const MAX_NAME_LEN: usize = 128;

/// Why a control call failed after authorization.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The body is not the JSON expected.
    #[error("bad request body: {0}")]
    Body(String),
    /// A field of the body has a bad value.
    #[error("{field}: {reason}")]
    Field {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry refused.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl ControlError {
    fn field(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Field {
            field,
            reason: reason.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Body(_) | Self::Field { .. } => StatusCode::BAD_REQUEST,
            Self::Registry(RegistryError::UnknownBackend { .. }) => StatusCode::NOT_FOUND,
            Self::Registry(RegistryError::DuplicateName { .. }) => StatusCode::CONFLICT,
            Self::Registry(RegistryError::SlotsExhausted { .. }) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// Logs the one line of a control call and turns its result into a
/// response.
fn finish(
    action: &'static str,
    backend: &str,
    result: Result<(StatusCode, serde_json::Value), ControlError>,
) -> Response {
    match result {
        Ok((status, body)) => {
            tracing::info!(action, backend, outcome = "ok", "control call");
            (status, Json(body)).into_response()
        }
        Err(error) => {
            tracing::info!(action, backend, outcome = %error, "control call");
            error.into_response()
        }
    }
}

fn set_admin(source: &StatsSource, name: &str, state: AdminState) -> Response {
    let action = match state {
        AdminState::Enabled => "enable",
        AdminState::Disabled => "disable",
        AdminState::Draining => "drain",
    };
    let result = match source.registry().pool().by_name(name) {
        Some(backend) => {
            let previous = backend.set_admin_state(state);
            Ok((
                StatusCode::OK,
                json!({
                    "backend": name,
                    "action": action,
                    "previous": previous.label(),
                    "admin": state.label(),
                    "active": backend.active(),
                }),
            ))
        }
        None => Err(RegistryError::UnknownBackend {
            name: name.to_owned(),
        }
        .into()),
    };
    finish(action, name, result)
}

/// `POST /api/v1/backends/{name}/disable`.
pub async fn disable(
    _: Authorized,
    State(source): State<Arc<StatsSource>>,
    Path(name): Path<String>,
) -> Response {
    set_admin(&source, &name, AdminState::Disabled)
}

/// `POST /api/v1/backends/{name}/enable`.
pub async fn enable(
    _: Authorized,
    State(source): State<Arc<StatsSource>>,
    Path(name): Path<String>,
) -> Response {
    set_admin(&source, &name, AdminState::Enabled)
}

/// `POST /api/v1/backends/{name}/drain`: no new connections, open ones
/// finish. The backend stays registered (unlike `DELETE`), so `enable`
/// undoes it and a config backend is not lost until the next reload.
pub async fn drain(
    _: Authorized,
    State(source): State<Arc<StatsSource>>,
    Path(name): Path<String>,
) -> Response {
    set_admin(&source, &name, AdminState::Draining)
}

/// The body of `POST /api/v1/backends`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// `host:port` (one port; no range).
    pub address: String,
    /// Defaults to the address.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// At least 1; default 1.
    #[serde(default)]
    pub weight: Option<u32>,
    /// `auto` (default, `forwarding.engine`) or `splice`.
    #[serde(default)]
    pub engine: BackendEngine,
}

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("address", &self.address)
            .field("name", &self.name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("weight", &self.weight)
            .field("engine", &self.engine)
            .finish()
    }
}

impl RegisterRequest {
    /// Validates the request the way the config file is validated and
    /// builds the backend it describes.
    ///
    /// # Errors
    /// [`ControlError::Field`] naming the first bad field.
    pub fn into_spec(self) -> Result<BackendSpec, ControlError> {
        let address = HostPort::from_str(&self.address)
            .map_err(|e| ControlError::field("address", e.to_string()))?;
        let address = address.to_string();
        let name = self.name.unwrap_or_else(|| address.clone());
        if name.is_empty() {
            return Err(ControlError::field("name", "must not be empty"));
        }
        if name.len() > MAX_NAME_LEN || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(ControlError::field(
                "name",
                format!("use at most {MAX_NAME_LEN} bytes, no `/` or control characters"),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(ControlError::field(
                "password",
                "a password needs a username",
            ));
        }
        for (field, value) in [("username", &self.username), ("password", &self.password)] {
            if let Some(value) = value
                && (value.is_empty() || value.len() > MAX_CREDENTIAL_LEN)
            {
                return Err(ControlError::field(
                    field,
                    format!("must be 1-{MAX_CREDENTIAL_LEN} bytes"),
                ));
            }
        }
        let weight = self.weight.unwrap_or(1);
        if weight == 0 {
            return Err(ControlError::field("weight", "must be at least 1"));
        }
        let mut spec = BackendSpec::new(name, address);
        spec.username = self.username;
        spec.password = self.password;
        spec.weight = weight;
        spec.engine = self.engine;
        Ok(spec)
    }
}

/// What `POST /api/v1/backends` answers.
#[derive(Debug, Serialize)]
struct Registered {
    name: String,
    address: String,
    slot: u32,
}

/// `POST /api/v1/backends`.
pub async fn register(
    _: Authorized,
    State(source): State<Arc<StatsSource>>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => {
            return finish(
                "register",
                "",
                Err(ControlError::Body(rejection.body_text())),
            );
        }
    };
    let label = request
        .name
        .clone()
        .unwrap_or_else(|| request.address.clone());
    let result = request.into_spec().and_then(|spec| {
        let backend = source
            .registry()
            .register(spec, Origin::Runtime, clock::now())?;
        let body = Registered {
            name: backend.name().to_owned(),
            address: backend.address().to_owned(),
            slot: backend.slot.0,
        };
        Ok((StatusCode::CREATED, json!(body)))
    });
    finish("register", &label, result)
}

/// `DELETE /api/v1/backends/{name}`: out of the pool now; it drains while
/// its connections finish.
pub async fn unregister(
    _: Authorized,
    State(source): State<Arc<StatsSource>>,
    Path(name): Path<String>,
) -> Response {
    let result = source.registry().unregister(&name).map(|backend| {
        (
            StatusCode::OK,
            json!({ "backend": name, "action": "unregister", "active": backend.active() }),
        )
    });
    finish("unregister", &name, result.map_err(ControlError::from))
}

/// `POST /api/v1/reset`.
pub async fn reset(_: Authorized, State(source): State<Arc<StatsSource>>) -> Response {
    let backends = source.reset_counters();
    finish(
        "reset",
        "*",
        Ok((
            StatusCode::OK,
            json!({
                "action": "reset",
                "backends": backends,
                "bytes_reset": true,
                "note": "counters and byte counters zeroed; breaker states, latency and timestamps are kept",
            }),
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: serde_json::Value) -> Result<RegisterRequest, serde_json::Error> {
        serde_json::from_value(body)
    }

    fn field_of(error: ControlError) -> &'static str {
        match error {
            ControlError::Field { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn a_minimal_request_becomes_a_weight_1_backend_named_after_its_address() {
        let spec = request(json!({"address": "10.0.0.9:1080"}))
            .expect("parses")
            .into_spec()
            .expect("valid");
        assert_eq!(spec.name, "10.0.0.9:1080");
        assert_eq!(spec.address, "10.0.0.9:1080");
        assert_eq!(spec.weight, 1);
        assert_eq!(spec.username, None);
    }

    #[test]
    fn every_field_is_carried_over() {
        let spec = request(json!({
            "address": "proxy.example:1081", "name": "c", "username": "u",
            "password": "p", "weight": 3, "engine": "splice"
        }))
        .expect("parses")
        .into_spec()
        .expect("valid");
        assert_eq!(
            (spec.name.as_str(), spec.address.as_str(), spec.weight),
            ("c", "proxy.example:1081", 3)
        );
        assert_eq!(spec.username.as_deref(), Some("u"));
        assert_eq!(spec.password.as_deref(), Some("p"));
        assert_eq!(spec.engine, crate::forward::BackendEngine::Splice);
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let long = "x".repeat(MAX_CREDENTIAL_LEN + 1);
        for (body, field) in [
            (json!({"address": "10.0.0.1"}), "address"),
            (json!({"address": "10.0.0.1:0"}), "address"),
            (json!({"address": "10.0.0.1:1080-1090"}), "address"),
            (json!({"address": "::1:1080"}), "address"),
            (json!({"address": ""}), "address"),
            (json!({"address": "10.0.0.1:1080", "name": ""}), "name"),
            (json!({"address": "10.0.0.1:1080", "name": "a/b"}), "name"),
            (
                json!({"address": "10.0.0.1:1080", "password": "p"}),
                "password",
            ),
            (
                json!({"address": "10.0.0.1:1080", "username": long}),
                "username",
            ),
            (json!({"address": "10.0.0.1:1080", "weight": 0}), "weight"),
        ] {
            let error = request(body.clone())
                .expect("parses")
                .into_spec()
                .expect_err("refused");
            assert!(error.to_string().starts_with(field), "{body}: {error}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            assert_eq!(field_of(error), field, "{body}");
        }
    }

    #[test]
    fn unknown_or_mistyped_fields_do_not_parse() {
        assert!(request(json!({"address": "10.0.0.1:1080", "wieght": 2})).is_err());
        assert!(request(json!({"address": "10.0.0.1:1080", "weight": -1})).is_err());
        assert!(request(json!({"name": "c"})).is_err());
        assert!(request(json!({"address": "10.0.0.1:1080", "engine": "sockmap"})).is_err());
    }

    #[test]
    fn the_debug_form_hides_the_password() {
        let req =
            request(json!({"address": "10.0.0.1:1080", "username": "u", "password": "hunter2"}))
                .expect("parses");
        let text = format!("{req:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn registry_errors_map_to_http_statuses() {
        let name = "a".to_owned();
        let cases = [
            (
                RegistryError::UnknownBackend { name: name.clone() },
                StatusCode::NOT_FOUND,
            ),
            (RegistryError::DuplicateName { name }, StatusCode::CONFLICT),
            (
                RegistryError::SlotsExhausted { capacity: 1 },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(ControlError::from(error).status(), status);
        }
    }
}
