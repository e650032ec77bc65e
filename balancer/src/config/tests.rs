//! Tests of the file format as a user meets it: the annotated example, the
//! brief's minimal shape, and one bad input per kind of mistake.

use std::{io::Write, time::Duration};

use super::*;
use crate::forward::{BackendEngine, EngineKind};

const EXAMPLE: &str = include_str!("../../../examples/balancer.yaml");

const MINIMAL: &str = r#"
instance: default
listeners:
  - { name: socks, mode: socks5, bind: "127.0.0.1:1080" }
backends:
  - { address: "127.0.0.1:1081-1083" }
  - { address: "[::1]:1090", username: alice, password: secret, weight: 2, name: v6 }
balancing:
  strategy: least_connections
  max_attempts: 3
  max_active_backends: 0
  max_latency_ms: 0
  sticky_sessions: { enabled: false, ttl: 10m }
health:
  circuit_threshold: 3
  recovery_interval: 10s
  max_recovery_interval: 60s
  metrics_window_size: 10
  passive_monitoring: true
  panic_mode: true
  probe: { target: "example.com:80", interval: 30s, timeout: 5s }
forwarding:
  engine: auto
  connect_timeout: 5s
  handshake_timeout: 10s
  idle_timeout: 0s
  socket_buffer: 16777216
  mark: 0
metrics:
  listen: "127.0.0.1:9898"
"#;

fn parse_err(text: &str) -> String {
    match Config::parse(text) {
        Ok(config) => panic!("expected an error, parsed {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn invalid(text: &str) -> Vec<Problem> {
    match Config::parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn annotated_example_parses_and_validates() {
    let config = Config::parse(EXAMPLE).expect("examples/balancer.yaml is valid");
    assert_eq!(config.listeners.len(), 3);
    assert_eq!(config.expanded_backends().len(), 4);
    assert_eq!(config.forwarding.mark, 4919);
}

#[test]
fn brief_shape_parses_with_every_value_equal_to_the_default() {
    let config = Config::parse(MINIMAL).expect("valid");
    let defaults = Config::default();
    assert_eq!(config.balancing, defaults.balancing);
    assert_eq!(config.health, defaults.health);
    assert_eq!(config.forwarding, defaults.forwarding);
    assert_eq!(config.metrics, defaults.metrics);
    assert_eq!(config.listeners, defaults.listeners);
    assert_eq!(config.instance, defaults.instance);
}

#[test]
fn backends_alone_are_a_complete_config() {
    let config = Config::parse("backends: [{ address: \"10.0.0.1:1080\" }]").expect("valid");
    assert_eq!(config.listeners, Config::default().listeners);
    assert_eq!(config.health.probe.interval.get(), Duration::from_secs(30));
}

#[test]
fn port_range_expands_to_one_backend_per_port_named_by_address() {
    let config = Config::parse(MINIMAL).expect("valid");
    let names: Vec<_> = config
        .expanded_backends()
        .into_iter()
        .map(|b| (b.name, b.port, b.source_index))
        .collect();
    assert_eq!(
        names,
        [
            ("127.0.0.1:1081".to_owned(), 1081, 0),
            ("127.0.0.1:1082".to_owned(), 1082, 0),
            ("127.0.0.1:1083".to_owned(), 1083, 0),
            ("v6".to_owned(), 1090, 1),
        ]
    );
}

#[test]
fn named_port_range_numbers_its_backends_from_one() {
    let config =
        Config::parse("backends: [{ address: \"127.0.0.1:1081-1090\", name: pool, weight: 3 }]")
            .expect("valid");
    let backends = config.expanded_backends();
    assert_eq!(backends.len(), 10);
    assert_eq!(backends[0].name, "pool-1");
    assert_eq!(backends[9].name, "pool-10");
    assert_eq!(backends[9].port, 1090);
    assert!(backends.iter().all(|b| b.weight == 3));
}

#[test]
fn ipv6_backend_is_named_with_brackets_and_keeps_its_credentials() {
    let config = Config::parse("backends: [{ address: \"[::1]:1090\", username: u, password: p }]")
        .expect("valid");
    let b = &config.expanded_backends()[0];
    assert_eq!(b.name, "[::1]:1090");
    assert_eq!(b.address(), "[::1]:1090");
    assert_eq!(b.password.as_ref().map(Secret::expose), Some("p"));
}

#[test]
fn unknown_key_names_the_key_and_the_line() {
    let msg =
        parse_err("backends: [{ address: \"1.2.3.4:80\" }]\nbalancing:\n  stratgy: round_robin\n");
    assert!(msg.contains("stratgy"), "{msg}");
    assert!(msg.contains(":3:"), "{msg}");
}

#[test]
fn unknown_key_inside_a_listener_is_refused() {
    let msg = parse_err(
        "backends: [{ address: \"1.2.3.4:80\" }]\nlisteners:\n  - { name: a, mode: socks5, bind: \"127.0.0.1:1\", port: 2 }\n",
    );
    assert!(msg.contains("port"), "{msg}");
    assert!(msg.contains(":3:"), "{msg}");
}

#[test]
fn reversed_port_range_names_the_key_path_and_line() {
    let msg = parse_err("backends:\n  - address: \"1.2.3.4:80\"\n  - address: \"1.2.3.4:90-81\"\n");
    assert!(msg.contains("backends[1].address"), "{msg}");
    assert!(msg.contains(":3:"), "{msg}");
    assert!(msg.contains("90-81"), "{msg}");
}

#[test]
fn oversized_port_range_is_refused() {
    let msg = parse_err("backends:\n  - address: \"1.2.3.4:1-20000\"\n");
    assert!(msg.contains("backends[0].address"), "{msg}");
    assert!(msg.contains("20000"), "{msg}");
}

#[test]
fn bad_duration_names_the_key_path_and_line() {
    let msg =
        parse_err("backends: [{ address: \"1.2.3.4:80\" }]\nhealth:\n  recovery_interval: 10\n");
    assert!(msg.contains("health.recovery_interval"), "{msg}");
    assert!(msg.contains(":3:"), "{msg}");
}

#[test]
fn bad_enum_value_lists_the_accepted_values() {
    let msg =
        parse_err("backends: [{ address: \"1.2.3.4:80\" }]\nbalancing:\n  strategy: fastest\n");
    assert!(msg.contains("balancing.strategy"), "{msg}");
    assert!(msg.contains("fastest"), "{msg}");
    assert!(msg.contains("least_connections"), "{msg}");
    assert!(msg.contains(":3:"), "{msg}");
}

#[test]
fn bad_listener_mode_names_the_listener() {
    let msg = parse_err(
        "backends: [{ address: \"1.2.3.4:80\" }]\nlisteners:\n  - { name: a, mode: http, bind: \"127.0.0.1:1\" }\n",
    );
    assert!(msg.contains("listeners[0].mode"), "{msg}");
}

#[test]
fn missing_backends_is_a_validation_error_on_backends() {
    let problems = invalid("instance: x\n");
    assert_eq!(
        problems,
        [Problem {
            key: "backends".into(),
            kind: ProblemKind::NoBackends
        }]
    );
}

#[test]
fn every_semantic_problem_is_reported_with_its_key() {
    let problems = invalid(
        r#"
instance: "has space"
listeners:
  - { name: a, mode: socks5, bind: "127.0.0.1:1080", auth: { users: [] } }
  - { name: a, mode: socks5, bind: "127.0.0.1:1080", pool: nowhere }
  - { name: r, mode: redirect, bind: "127.0.0.1:1081", auth: { required: false } }
backends:
  - { address: "1.2.3.4:80", name: x, weight: 0 }
  - { address: "1.2.3.5:80", name: x, password: p }
balancing: { max_attempts: 0 }
health: { recovery_interval: 2m, max_recovery_interval: 1m }
"#,
    );
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "instance",
            "listeners[0].auth.users",
            "listeners[1].name",
            "listeners[1].bind",
            "listeners[1].pool",
            "listeners[2].auth",
            "listeners[2].mode",
            "backends[0].weight",
            "backends[1].password",
            "backends[1].name",
            "balancing.max_attempts",
            "health.recovery_interval",
        ]
    );
}

#[test]
fn two_redirect_listeners_of_one_family_are_refused_but_one_per_family_is_fine() {
    let base = "backends: [{ address: \"1.2.3.4:80\" }]\nforwarding: { mark: 7 }\nlisteners:\n";
    let ok = format!(
        "{base}  - {{ name: a, mode: redirect, bind: \"0.0.0.0:1\" }}\n  - {{ name: b, mode: redirect, bind: \"[::1]:1\" }}\n"
    );
    assert!(Config::parse(&ok).is_ok());
    let dual = format!(
        "{base}  - {{ name: a, mode: redirect, bind: \"0.0.0.0:1\" }}\n  - {{ name: b, mode: redirect, bind: \"[::]:1\" }}\n"
    );
    let problems = invalid(&dual);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "listeners[1].bind");
}

#[test]
fn tproxy_mark_must_differ_from_the_connection_mark() {
    let problems = invalid(
        "backends: [{ address: \"1.2.3.4:80\" }]\nforwarding: { mark: 1 }\nlisteners: [{ name: t, mode: tproxy, bind: \"0.0.0.0:9\" }]\n",
    );
    assert_eq!(problems[0].key, "transparent.tproxy_mark");
    assert_eq!(problems[0].kind, ProblemKind::SameMark(1));
}

#[test]
fn a_kernel_queue_limit_is_off_or_at_least_the_warning_mark() {
    let base = "backends: [{ address: \"1.2.3.4:80\" }]\n";
    let problems = invalid(&format!(
        "{base}forwarding: {{ kernel_queue_limit: 1048576 }}\n"
    ));
    assert_eq!(problems[0].key, "forwarding.kernel_queue_limit");
    assert_eq!(
        problems[0].kind,
        ProblemKind::KernelQueueLimitTooSmall(1 << 20)
    );
    for (limit, expected) in [(0, None), (64 << 20, Some(64 << 20))] {
        let config = Config::parse(&format!(
            "{base}forwarding: {{ kernel_queue_limit: {limit} }}\n"
        ))
        .expect("valid");
        assert_eq!(
            config.forwarding.forward_options(None).kernel_queue_limit,
            expected
        );
    }
}

#[test]
fn expanded_names_must_be_unique_across_entries() {
    let problems =
        invalid("backends:\n  - address: \"1.2.3.4:80-81\"\n  - address: \"1.2.3.4:81\"\n");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "backends[1].address");
}

#[test]
fn metrics_listen_may_be_disabled_but_not_collide_with_a_listener() {
    let off = Config::parse("backends: [{ address: \"1.2.3.4:80\" }]\nmetrics: { listen: null }\n")
        .expect("valid");
    assert_eq!(off.metrics.listen, None);
    let problems = invalid(
        "backends: [{ address: \"1.2.3.4:80\" }]\nmetrics: { listen: \"127.0.0.1:1080\" }\n",
    );
    assert_eq!(problems[0].key, "metrics.listen");
}

#[test]
fn metrics_token_is_optional_masked_and_must_not_be_empty() {
    let config = Config::parse(
        "backends: [{ address: \"1.2.3.4:80\" }]\nmetrics: { token: \"t0ken-value\" }\n",
    )
    .expect("valid");
    let token = config.metrics.token.as_ref().expect("token");
    assert_eq!(token.expose(), "t0ken-value");
    assert!(!format!("{config:?}").contains("t0ken-value"));
    assert_eq!(Config::parse(EXAMPLE).expect("valid").metrics.token, None);
    let problems = invalid("backends: [{ address: \"1.2.3.4:80\" }]\nmetrics: { token: \"\" }\n");
    assert_eq!(problems[0].key, "metrics.token");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let config = Config::parse(EXAMPLE).expect("valid");
    let debug = format!("{config:?} {:?}", config.expanded_backends());
    assert!(!debug.contains("change-me"), "{debug}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(debug.contains("***"));
}

#[test]
fn load_reports_a_missing_file_with_its_path() {
    let path = std::path::Path::new("/nonexistent/balancer-test.yaml");
    let msg = Config::load(path).expect_err("missing").to_string();
    assert!(msg.contains("/nonexistent/balancer-test.yaml"), "{msg}");
}

#[test]
fn load_prefixes_errors_with_file_line_and_column() {
    let path =
        std::env::temp_dir().join(format!("balancer-config-test-{}.yaml", std::process::id()));
    let mut file = std::fs::File::create(&path).expect("create temp file");
    file.write_all(b"backends:\n  - address: \"1.2.3.4:80\"\n    colour: blue\n")
        .expect("write temp file");
    let result = Config::load(&path);
    std::fs::remove_file(&path).expect("remove temp file");
    let msg = result.expect_err("unknown key").to_string();
    assert!(
        msg.starts_with(&format!("{}:3:5: ", path.display())),
        "{msg}"
    );
}

#[test]
fn forwarding_section_maps_zero_to_none_in_engine_options() {
    let mut f = ForwardingConfig {
        socket_buffer: 8 << 20,
        ..ForwardingConfig::default()
    };
    let opts = f.forward_options(None);
    assert_eq!(opts.socket_buffer, Some(8 << 20));
    assert_eq!(opts.idle_timeout, None);
    f.socket_buffer = 0;
    f.idle_timeout = DurationValue::from_secs(30);
    let opts = f.forward_options(None);
    assert_eq!(opts.socket_buffer, None);
    assert_eq!(opts.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(EngineKind::from(Engine::Splice), EngineKind::Splice);
}

#[test]
fn listener_bind_must_be_a_socket_address() {
    let msg = parse_err(
        "backends: [{ address: \"1.2.3.4:80\" }]\nlisteners: [{ name: a, mode: socks5, bind: \"localhost:1080\" }]\n",
    );
    assert!(msg.contains("listeners[0].bind"), "{msg}");
}

#[test]
fn a_backend_may_ask_for_splice_and_defaults_to_the_daemons_engine() {
    let config = Config::parse(
        "backends:\n  - { address: \"1.2.3.4:80\", engine: splice }\n  - { address: \"1.2.3.4:81\" }\n",
    )
    .expect("valid");
    let engines: Vec<BackendEngine> = crate::reload::backend_specs(&config)
        .into_iter()
        .map(|spec| spec.engine)
        .collect();
    assert_eq!(engines, [BackendEngine::Splice, BackendEngine::Auto]);
}

#[test]
fn a_backend_cannot_ask_for_sockmap_and_the_error_names_the_place_and_the_choices() {
    let msg = parse_err("backends:\n  - { address: \"1.2.3.4:80\", engine: sockmap }\n");
    assert!(msg.contains("unknown variant `sockmap`"), "{msg}");
    assert!(msg.contains("`auto`") && msg.contains("`splice`"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}
