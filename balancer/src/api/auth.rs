//! Who may change the daemon's state: the bearer token of `metrics.token`.
//! Read-only routes never come here. With no token configured every
//! control call is refused, so exposing `metrics.listen` on a network never
//! hands out control by accident.

use axum::{
    Json,
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};

use super::ErrorBody;
use crate::config::Secret;

/// Why a control call was refused before it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `metrics.token`: the control API is off.
    #[error("the control API is disabled: set metrics.token in the config to enable it")]
    NotConfigured,
    /// No `Authorization: Bearer ...` header.
    #[error("missing bearer token: send Authorization: Bearer <metrics.token>")]
    Missing,
    /// A token that is not `metrics.token`.
    #[error("invalid bearer token")]
    Invalid,
}

impl AuthError {
    /// The HTTP status: 403 when nobody may call, 401 when the caller did
    /// not prove who they are.
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Self::NotConfigured => StatusCode::FORBIDDEN,
            Self::Missing | Self::Invalid => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `outcome` field of the log line.
    #[must_use]
    pub fn outcome(self) -> &'static str {
        match self {
            Self::NotConfigured => "refused: no token configured",
            Self::Missing => "unauthorized: no token",
            Self::Invalid => "unauthorized: wrong token",
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: self.to_string(),
        });
        if self.status() == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))];
            (self.status(), challenge, body).into_response()
        } else {
            (self.status(), body).into_response()
        }
    }
}

/// Checks the `Authorization` header of a request against `token`.
///
/// # Errors
/// [`AuthError`] when the call must not run.
pub fn check(headers: &HeaderMap, token: Option<&Secret>) -> Result<(), AuthError> {
    let Some(token) = token else {
        return Err(AuthError::NotConfigured);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or(AuthError::Missing)?;
    if constant_time_eq(token.expose().as_bytes(), presented.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

/// The credentials of a `Bearer` authorization value; the scheme is
/// case-insensitive (RFC 9110 section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// Equality whose time depends on the lengths only, not on where the first
/// differing byte is, so the token cannot be guessed byte by byte.
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != presented.len());
    for (i, byte) in presented.iter().enumerate() {
        diff |= expected.get(i).copied().unwrap_or(0) ^ byte;
    }
    std::hint::black_box(diff) == 0
}

/// The configured token, as handler state.
#[derive(Clone, Debug, Default)]
pub struct Token(pub Option<Secret>);

/// Proof that a request carried the right token; a handler that takes it
/// as its first argument never runs otherwise.
#[derive(Debug)]
pub struct Authorized;

impl<S> FromRequestParts<S> for Authorized
where
    S: Send + Sync,
    Token: FromRef<S>,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = Token::from_ref(state);
        // The handler never runs on a refusal, so this is the call's one
        // log line.
        check(&parts.headers, token.0.as_ref()).inspect_err(|error| {
            tracing::info!(
                method = %parts.method,
                path = %parts.uri.path(),
                outcome = error.outcome(),
                "control call"
            );
        })?;
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        headers
    }

    fn token() -> Option<Secret> {
        Some(Secret::new("s3cret-token"))
    }

    #[test]
    fn the_right_token_passes_whatever_the_scheme_case() {
        for value in [
            "Bearer s3cret-token",
            "bearer s3cret-token",
            "BEARER  s3cret-token",
        ] {
            assert_eq!(
                check(&headers(Some(value)), token().as_ref()),
                Ok(()),
                "{value}"
            );
        }
    }

    #[test]
    fn a_missing_or_malformed_header_is_401_missing() {
        for value in [
            None,
            Some("s3cret-token"),
            Some("Basic czNjcmV0"),
            Some("Bearer "),
        ] {
            let error = check(&headers(value), token().as_ref()).expect_err("refused");
            assert_eq!(error, AuthError::Missing, "{value:?}");
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn a_wrong_token_is_401_invalid_including_prefixes_and_extensions() {
        for value in [
            "Bearer wrong",
            "Bearer s3cret-toke",
            "Bearer s3cret-token2",
            "Bearer S3CRET-TOKEN",
        ] {
            let error = check(&headers(Some(value)), token().as_ref()).expect_err("refused");
            assert_eq!(error, AuthError::Invalid, "{value}");
            assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn without_a_configured_token_every_call_is_403_even_with_a_header() {
        for value in [None, Some("Bearer anything")] {
            let error = check(&headers(value), None).expect_err("refused");
            assert_eq!(error, AuthError::NotConfigured);
            assert_eq!(error.status(), StatusCode::FORBIDDEN);
            assert!(error.to_string().contains("metrics.token"), "{error}");
        }
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abc", b""));
    }
}
