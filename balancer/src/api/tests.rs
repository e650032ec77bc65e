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
    let server = super::ApiServer::bind("127.0.0.1:0".parse().expect("addr"), source(false))
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
    let error = super::ApiServer::bind(addr, source(false))
        .await
        .expect_err("address in use");
    let text = error.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("metrics.listen"),
        "{text}"
    );
}
