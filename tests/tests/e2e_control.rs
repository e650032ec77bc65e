//! Black-box: the control API on `metrics.listen`. Two `microsocks`
//! backends `a` and `b` (a third, `c`, registered at run time), round robin,
//! probes off, `metrics.token` set. Control calls without or with a wrong
//! token are 401; disabling `a` keeps new connections off it and enabling
//! it brings them back; draining `b` lets its open connection finish while
//! new ones avoid it; `c` registered by `POST` takes traffic and leaves on
//! `DELETE`; `reset` zeroes the attempts and keeps the breaker states.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use balancer_tests::{Microsocks, NetNs, require_root};
use serde_json::Value;
use support::{
    ChecksumTarget, Daemon, Target, free_port, http_exchange, ping, socks_connect, stats_json,
    unique,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
const TOKEN: &str = "e2e-control-token";

/// One HTTP/1.0 request from inside `ns`: (status, JSON body or Null).
fn http(
    ns: &NetNs,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http_exchange(ns, addr, request);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The JSON of backend `name` from the read-only API.
fn backend(ns: &NetNs, api: SocketAddr, name: &str) -> Value {
    let (status, body) = http(
        ns,
        api,
        "GET",
        &format!("/api/v1/backends/{name}"),
        None,
        "",
    );
    assert_eq!(status, 200, "GET backend {name}: {body}");
    body
}

fn attempts(ns: &NetNs, api: SocketAddr, name: &str) -> u64 {
    backend(ns, api, name)["attempts"]
        .as_u64()
        .unwrap_or_else(|| panic!("no attempts for {name}"))
}

/// A control call with the right token that must answer `expect`.
fn control(
    ns: &NetNs,
    api: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    expect: u16,
) -> Value {
    let (status, json) = http(ns, api, method, path, Some(TOKEN), body);
    assert_eq!(status, expect, "{method} {path}: {json}");
    json
}

/// `n` client connections through the daemon, each must ping.
fn connect_and_ping(ns: &NetNs, proxy: SocketAddr, target: SocketAddr, n: usize) {
    ns.run(move || {
        for i in 0..n {
            let mut stream = socks_connect(proxy, &Target::Addr(target), None)
                .unwrap_or_else(|e| panic!("connection {i}: SOCKS5 CONNECT: {e:?}"));
            ping(&mut stream).unwrap_or_else(|e| panic!("connection {i}: ping: {e}"));
        }
    })
    .expect("netns");
}

/// Waits (bounded) until every backend of the API reports no open
/// connection, so attempt counts are final.
fn settle(ns: &NetNs, api: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, all) = http(ns, api, "GET", "/api/v1/backends", None, "");
        let active: u64 = all
            .as_array()
            .map(|list| list.iter().filter_map(|b| b["active"].as_u64()).sum())
            .unwrap_or(u64::MAX);
        if active == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connections still open after 10 s: {all}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn control_api_disables_drains_registers_unregisters_and_resets() {
    require_root("network namespaces and BPF");
    let ns = NetNs::new().expect("netns");
    let target = ChecksumTarget::start(&ns, IpAddr::V4(LO)).expect("target");
    let socks: Vec<Microsocks> = (0..3)
        .map(|_| Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks"))
        .collect();
    let api = SocketAddr::from((LO, free_port(&ns, LO)));
    let instance = unique("control");
    let yaml = format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n  - {{ name: a, address: \"{}\" }}\n  - {{ name: b, address: \"{}\" }}\n\
         balancing: {{ strategy: round_robin, max_attempts: 2 }}\n\
         health: {{ probe: {{ enabled: false }} }}\n\
         forwarding: {{ engine: auto, connect_timeout: 1s, handshake_timeout: 2s }}\n\
         metrics: {{ listen: \"{api}\", token: \"{TOKEN}\" }}\n",
        socks[0].addr(),
        socks[1].addr(),
    );
    let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
    let proxy = daemon.listener("socks");
    let target = target.addr();

    // Auth: no token and a wrong one are 401 with a JSON error and change
    // nothing; reads stay open.
    for token in [None, Some("wrong-token")] {
        let (status, body) = http(&ns, api, "POST", "/api/v1/backends/a/disable", token, "");
        assert_eq!(status, 401, "token {token:?}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(backend(&ns, api, "a")["disabled"], false);

    // Disable a: every new connection succeeds, through b only.
    connect_and_ping(&ns, proxy, target, 2);
    settle(&ns, api);
    let a_before = attempts(&ns, api, "a");
    let body = control(&ns, api, "POST", "/api/v1/backends/a/disable", "", 200);
    assert_eq!(body["admin"], "disabled", "{body}");
    assert_eq!(backend(&ns, api, "a")["disabled"], true);
    connect_and_ping(&ns, proxy, target, 20);
    settle(&ns, api);
    assert_eq!(
        attempts(&ns, api, "a"),
        a_before,
        "a took traffic while disabled"
    );

    // Enable a: it takes traffic again.
    control(&ns, api, "POST", "/api/v1/backends/a/enable", "", 200);
    connect_and_ping(&ns, proxy, target, 10);
    settle(&ns, api);
    assert!(
        attempts(&ns, api, "a") > a_before,
        "a got no traffic once enabled"
    );

    // Drain b while a connection through it is open: open connections one
    // at a time until one lands on b (round robin: within two).
    let mut held = Vec::new();
    let through_b = loop {
        let before = backend(&ns, api, "b")["active"].as_u64().unwrap_or(0);
        let stream = ns
            .run(move || socks_connect(proxy, &Target::Addr(target), None).expect("CONNECT"))
            .expect("netns");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut on_b = false;
        while Instant::now() < deadline {
            if backend(&ns, api, "b")["active"].as_u64().unwrap_or(0) > before {
                on_b = true;
                break;
            }
            let (_, all) = http(&ns, api, "GET", "/api/v1/backends", None, "");
            let open: u64 = all
                .as_array()
                .map(|l| l.iter().filter_map(|b| b["active"].as_u64()).sum())
                .unwrap_or(0);
            if open as usize > held.len() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if on_b {
            break stream;
        }
        held.push(stream);
        assert!(held.len() < 4, "no connection landed on b");
    };
    let b_before = attempts(&ns, api, "b");
    let body = control(&ns, api, "POST", "/api/v1/backends/b/drain", "", 200);
    assert_eq!(body["admin"], "draining", "{body}");
    assert_eq!(body["active"], 1, "{body}");
    let mut through_b = through_b;
    ns.run(move || {
        ping(&mut through_b).expect("the drained backend's open connection still works");
        drop(through_b);
    })
    .expect("netns");
    drop(held);
    connect_and_ping(&ns, proxy, target, 10);
    settle(&ns, api);
    assert_eq!(
        attempts(&ns, api, "b"),
        b_before,
        "b took new connections while draining"
    );

    // Register c: validated, then it takes traffic.
    let (status, body) = http(
        &ns,
        api,
        "POST",
        "/api/v1/backends",
        Some(TOKEN),
        r#"{"address": "not-an-address", "name": "c"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").starts_with("address"),
        "{body}"
    );
    let request = format!(r#"{{"address": "{}", "name": "c"}}"#, socks[2].addr());
    let body = control(&ns, api, "POST", "/api/v1/backends", &request, 201);
    assert_eq!(body["name"], "c", "{body}");
    control(&ns, api, "POST", "/api/v1/backends", &request, 409);
    connect_and_ping(&ns, proxy, target, 10);
    settle(&ns, api);
    let c_attempts = attempts(&ns, api, "c");
    assert!(c_attempts > 0, "c got no traffic");

    // Unregister c: it leaves the pool (listed as draining until reaped)
    // and takes no new connection.
    control(&ns, api, "DELETE", "/api/v1/backends/c", "", 200);
    control(&ns, api, "DELETE", "/api/v1/backends/c", "", 404);
    connect_and_ping(&ns, proxy, target, 10);
    settle(&ns, api);
    // Listed as draining until the daemon's cleanup (every 10 s) frees it.
    let (status, c) = http(&ns, api, "GET", "/api/v1/backends/c", None, "");
    if status != 404 {
        assert_eq!(c["draining"], true, "{c}");
        assert_eq!(
            c["attempts"].as_u64(),
            Some(c_attempts),
            "c took traffic after DELETE"
        );
    }

    // Reset: attempts back to 0, breaker states unchanged.
    let (_, all) = http(&ns, api, "GET", "/api/v1/backends", None, "");
    let states: Vec<(String, String)> = all
        .as_array()
        .expect("a list")
        .iter()
        .map(|b| (b["name"].to_string(), b["state"].to_string()))
        .collect();
    let bytes = |snapshot: &Value| -> u64 {
        snapshot["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| b["bytes_up"].as_u64().unwrap_or(0) + b["bytes_down"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = stats_json(&instance);
    assert!(
        bytes(&before) > 0,
        "no bytes counted before reset: {before:#}"
    );
    let body = control(&ns, api, "POST", "/api/v1/reset", "", 200);
    assert_eq!(body["bytes_reset"], true, "{body}");
    // Read as `balancer stats` reads it: the pinned maps under sockmap (the
    // kernel's BACKEND_BYTES), the status file under splice, whose next
    // rewrite is at most a second away.
    let deadline = Instant::now() + Duration::from_secs(5);
    let after_reset = loop {
        let snapshot = stats_json(&instance);
        if bytes(&snapshot) == 0 || Instant::now() > deadline {
            break snapshot;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        bytes(&after_reset),
        0,
        "bytes kept after reset: {after_reset:#}"
    );
    if after_reset["engine"] == "sockmap" {
        assert_eq!(after_reset["source"], "bpf_maps", "{after_reset:#}");
    }
    let (_, all) = http(&ns, api, "GET", "/api/v1/backends", None, "");
    let list = all.as_array().expect("a list");
    let after: Vec<(String, String)> = list
        .iter()
        .map(|b| (b["name"].to_string(), b["state"].to_string()))
        .collect();
    // c may be reaped between the two reads: compare the others.
    let without_c = |list: Vec<(String, String)>| -> Vec<(String, String)> {
        list.into_iter()
            .filter(|(name, _)| name != "\"c\"")
            .collect()
    };
    let (after, states) = (without_c(after), without_c(states));
    assert_eq!(after, states, "breaker states changed on reset");
    for b in list {
        assert_eq!(b["attempts"], 0, "{b}");
        assert_eq!(b["successes"], 0, "{b}");
    }
    let (_, status) = http(&ns, api, "GET", "/api/v1/status", None, "");
    assert_eq!(status["counters"]["accepted"], 0, "{status}");

    // Every control call was logged with its action and outcome.
    for action in [
        "disable",
        "enable",
        "drain",
        "register",
        "unregister",
        "reset",
    ] {
        assert!(
            daemon.log_contains(&format!("action=\"{action}\""))
                || daemon.log_contains(&format!("action={action}")),
            "no log line for {action}:\n{}",
            daemon.logs()
        );
    }
    assert!(daemon.log_contains("unauthorized"), "{}", daemon.logs());
}

#[test]
fn a_runtime_backend_that_carries_nothing_expires_and_its_slot_is_freed() {
    require_root("network namespaces and BPF");
    let ns = NetNs::new().expect("netns");
    let socks = Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks");
    let spare = Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks");
    let api = SocketAddr::from((LO, free_port(&ns, LO)));
    let instance = unique("expire");
    let yaml = format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n  - {{ name: a, address: \"{}\" }}\n\
         health: {{ probe: {{ enabled: false }}, runtime_idle_timeout: 1s }}\n\
         metrics: {{ listen: \"{api}\", token: \"{TOKEN}\" }}\n",
        socks.addr(),
    );
    let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
    let request = format!(r#"{{"address": "{}", "name": "idle"}}"#, spare.addr());
    control(&ns, api, "POST", "/api/v1/backends", &request, 201);
    // The cleanup runs every 10 s: idle past 1 s, then drained and freed.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let (status, body) = http(&ns, api, "GET", "/api/v1/backends/idle", None, "");
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle run-time backend is still listed after 25 s: {body}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        daemon.log_contains("removed an idle run-time backend"),
        "{}",
        daemon.logs()
    );
    // The config's backend is never expired.
    assert_eq!(backend(&ns, api, "a")["name"], "a");
}
