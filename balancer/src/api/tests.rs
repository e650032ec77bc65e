use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
};

use super::{backend, health};
use crate::{
    backend::{BackendSpec, BreakerState, HealthConfig, Registry},
    clock,
    forward::{Engine, ForwardOptions, splice::SpliceEngine},
    stats::{Counters, source::StatsSource},
};

fn source(panic_mode: bool) -> Arc<StatsSource> {
    let registry = Arc::new(Registry::new(HealthConfig {
        panic_mode,
        ..HealthConfig::default()
    }));
    registry
        .replace_all(
            vec![
                BackendSpec::new("a", "10.0.0.1:1080"),
                BackendSpec::new("b", "10.0.0.2:1080"),
            ],
            clock::now(),
        )
        .expect("two backends");
    let engine = SpliceEngine::new(ForwardOptions::default()).expect("splice engine");
    Arc::new(StatsSource::new(
        "t".to_owned(),
        Arc::new(Engine::Splice(engine)),
        registry,
        Arc::new(Counters::default()),
    ))
}

fn open_all(source: &StatsSource) {
    let now = clock::now();
    for backend in source.registry().pool().backends() {
        let _ = backend.force(BreakerState::Open, now);
    }
}

#[tokio::test]
async fn health_is_ok_while_a_breaker_admits_and_503_when_all_are_open() {
    let source = source(false);
    let (code, body) = health(State(source.clone())).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("2 of 2"), "{body}");

    let now = clock::now();
    let pool = source.registry().pool();
    let _ = pool.backends()[0].force(BreakerState::Open, now);
    let _ = pool.backends()[1].force(BreakerState::HalfOpen, now);
    let (code, body) = health(State(source.clone())).await;
    assert_eq!(code, StatusCode::OK, "half-open still admits: {body}");

    open_all(&source);
    let (code, body) = health(State(source)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn health_is_ok_with_every_breaker_open_in_panic_mode() {
    let source = source(true);
    open_all(&source);
    let (code, body) = health(State(source)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_unknown_backend_is_a_json_404() {
    let source = source(false);
    let found = backend(State(source.clone()), Path("b".to_owned())).await;
    assert_eq!(found.status(), StatusCode::OK);
    let missing = backend(State(source), Path("nope".to_owned())).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers()[axum::http::header::CONTENT_TYPE],
        "application/json"
    );
    let body = axum::body::to_bytes(missing.into_body(), 4096)
        .await
        .expect("body");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert!(
        json["error"].as_str().is_some_and(|e| e.contains("nope")),
        "{json}"
    );
}

#[tokio::test]
async fn the_server_answers_over_tcp_and_stops_with_the_token() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = super::ApiServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        super::ApiState::new(source(false), None),
    )
    .await
    .expect("bind");
    let addr = server.local_addr().expect("address");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.serve(shutdown.clone()));
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(
        response.contains("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{response}"
    );
    assert!(response.trim_end().ends_with("# EOF"), "{response}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .expect("server task");
}

#[tokio::test]
async fn binding_a_taken_address_names_it_and_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address");
    let error = super::ApiServer::bind(addr, super::ApiState::new(source(false), None))
        .await
        .expect_err("address in use");
    let text = error.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("metrics.listen"),
        "{text}"
    );
}

mod control {
    use axum::http::StatusCode;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::source;
    use crate::{
        api::{ApiServer, ApiState},
        backend::AdminState,
        config::Secret,
    };

    /// One HTTP/1.1 request over a fresh server on a loopback port (no
    /// HTTP client crate needed for a handful of calls).
    async fn call(
        state: &ApiState,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let server = ApiServer::bind("127.0.0.1:0".parse().expect("addr"), state.clone())
            .await
            .expect("bind");
        let addr = server.local_addr().expect("addr");
        let stop = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn(server.serve(stop.clone()));
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {uri} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_string(&mut response),
        )
        .await
        .expect("answered in time")
        .expect("read");
        stop.cancel();
        let _ = serving.await;
        let code: u16 = response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let json = response
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .unwrap_or(serde_json::Value::Null);
        (StatusCode::from_u16(code).expect("status"), json)
    }

    #[tokio::test]
    async fn control_routes_need_the_token_and_read_only_ones_do_not() {
        let state = ApiState::new(source(true), Some(Secret::new("t0k")));
        let (code, body) = call(&state, "POST", "/api/v1/backends/a/disable", None, "").await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body["error"].is_string(), "{body}");
        let (code, _) = call(&state, "POST", "/api/v1/reset", Some("nope"), "").await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, _) = call(&state, "GET", "/api/v1/backends", None, "").await;
        assert_eq!(code, StatusCode::OK);

        let closed = ApiState::new(source(true), None);
        let (code, body) = call(&closed, "POST", "/api/v1/reset", Some("t0k"), "").await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or("")
                .contains("metrics.token"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn disable_enable_drain_register_unregister_and_reset_act_on_the_registry() {
        let source = source(true);
        let state = ApiState::new(source.clone(), Some(Secret::new("t0k")));
        let token = Some("t0k");
        let (code, body) = call(&state, "POST", "/api/v1/backends/a/disable", token, "").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let pool = source.registry().pool();
        assert_eq!(pool.backends()[0].admin_state(), AdminState::Disabled);
        assert!(!pool.backends()[0].is_selectable());
        let (_, body) = call(&state, "GET", "/api/v1/backends/a", None, "").await;
        assert_eq!(body["disabled"], true, "{body}");

        let (code, _) = call(&state, "POST", "/api/v1/backends/a/enable", token, "").await;
        assert_eq!(code, StatusCode::OK);
        assert!(pool.backends()[0].is_selectable());
        let (code, body) = call(&state, "POST", "/api/v1/backends/b/drain", token, "").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["admin"], "draining", "{body}");
        let (code, _) = call(&state, "POST", "/api/v1/backends/zz/drain", token, "").await;
        assert_eq!(code, StatusCode::NOT_FOUND);

        let (code, body) = call(
            &state,
            "POST",
            "/api/v1/backends",
            token,
            r#"{"address": "10.0.0.3:1080", "name": "c"}"#,
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        assert!(source.registry().pool().by_name("c").is_some());
        let (code, body) = call(
            &state,
            "POST",
            "/api/v1/backends",
            token,
            r#"{"address": "c"}"#,
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"].as_str().unwrap_or("").starts_with("address"),
            "{body}"
        );
        let (code, body) = call(&state, "POST", "/api/v1/backends", token, "{not json").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"].is_string(), "{body}");
        let (code, _) = call(
            &state,
            "POST",
            "/api/v1/backends",
            token,
            r#"{"address": "10.0.0.3:1080", "name": "c"}"#,
        )
        .await;
        assert_eq!(code, StatusCode::CONFLICT);
        let (code, _) = call(&state, "DELETE", "/api/v1/backends/c", token, "").await;
        assert_eq!(code, StatusCode::OK);
        assert!(source.registry().pool().by_name("c").is_none());

        let now = crate::clock::now();
        let pool = source.registry().pool();
        let a = &pool.backends()[0];
        let _ = a.record(Ok(std::time::Duration::from_millis(1)), now);
        let _ = a.force(crate::backend::BreakerState::Open, now);
        let (code, body) = call(&state, "POST", "/api/v1/reset", token, "").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let status = a.status(crate::clock::now());
        assert_eq!((status.attempts, status.successes), (0, 0));
        assert_eq!(
            a.state(),
            crate::backend::BreakerState::Open,
            "breaker kept"
        );
    }
}
