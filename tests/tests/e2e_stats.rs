//! Black-box: `balancer stats` against a running daemon. Two `microsocks`
//! backends and a target that sinks then sources a known number of bytes,
//! all on loopback of a throw-away namespace; 8 connections through the
//! sockmap engine, then through the splice engine. The per-backend byte
//! counts `balancer stats --json` reports must equal, to the byte, what the
//! clients sent and received after their SOCKS5 handshakes. A third run
//! puts a backend with `engine: splice` beside a sockmap one. A fourth puts
//! a backend that writes in 1 KiB pieces beside one that writes 64 KiB, and
//! the daemon must advise `engine: splice` for the first only.

mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use balancer_tests::{Microsocks, NetNs, require_root};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use support::{
    ChunkedBackend, Daemon, Pattern, Target, ThreadServer, chunked_download, free_port,
    http_exchange, socks_connect, stats, stats_json, two_backend_config, unique,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
const CONNECTIONS: u64 = 8;
/// Payload each connection sends up and receives down (besides headers).
const UP_PAYLOAD: u64 = 3 << 20;
const DOWN_PAYLOAD: u64 = 5 << 20;
/// What the client writes after its handshake: header, then payload.
const UP_PER_CONNECTION: u64 = 16 + UP_PAYLOAD;
/// What the client reads after its handshake: SHA-256 of the upload, then
/// the payload.
const DOWN_PER_CONNECTION: u64 = 32 + DOWN_PAYLOAD;

/// A TCP server in a namespace: the client sends a big-endian `u64` U, a
/// `u64` D, then U bytes; the server answers with the SHA-256 of those U
/// bytes, then D bytes of [`Pattern`] seed D, and closes.
struct SinkSource(ThreadServer);

impl SinkSource {
    fn start(ns: &NetNs) -> Self {
        Self(
            ThreadServer::start(ns, SocketAddr::from((LO, 0)), sink_then_source)
                .expect("start the target"),
        )
    }
}

fn sink_then_source(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut header = [0u8; 16];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let (up, down) = header.split_at(8);
    let up = u64::from_be_bytes(up.try_into().unwrap_or_default());
    let down = u64::from_be_bytes(down.try_into().unwrap_or_default());
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = up;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(buf.len()).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                sha.update(&buf[..n]);
                left -= n as u64;
            }
        }
    }
    let digest: [u8; 32] = sha.finalize().into();
    if stream.write_all(&digest).is_ok() {
        let _ = Pattern::new(down).write(&mut stream, down);
    }
}

/// One connection through the proxy: uploads, checks the server's digest of
/// the upload and the download's digest; returns (bytes written, bytes read)
/// after the handshake.
fn transfer(proxy: SocketAddr, target: SocketAddr, seed: u64) -> (u64, u64) {
    let mut stream = socks_connect(proxy, &Target::Addr(target), None).expect("SOCKS5 CONNECT");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut upload = Vec::with_capacity(usize::try_from(UP_PER_CONNECTION).expect("fits"));
    upload.extend_from_slice(&UP_PAYLOAD.to_be_bytes());
    upload.extend_from_slice(&DOWN_PAYLOAD.to_be_bytes());
    let header = upload.len();
    Pattern::new(seed)
        .write(&mut upload, UP_PAYLOAD)
        .expect("fill upload");
    let upload_digest: [u8; 32] = Sha256::digest(&upload[header..]).into();
    stream.write_all(&upload).expect("upload");
    let mut download = Vec::new();
    stream.read_to_end(&mut download).expect("download");
    assert_eq!(
        download.len() as u64,
        DOWN_PER_CONNECTION,
        "download length"
    );
    assert_eq!(download[..32], upload_digest, "server saw another upload");
    let mut expected = Vec::new();
    Pattern::new(DOWN_PAYLOAD)
        .write(&mut expected, DOWN_PAYLOAD)
        .expect("expected download");
    assert!(download[32..] == expected[..], "download corrupted");
    (upload.len() as u64, download.len() as u64)
}

fn u64_field(backend: &Value, key: &str) -> u64 {
    backend[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {backend}"))
}

/// A copy of the daemon's config, removed on drop (for `stats --config`).
struct ConfigCopy(PathBuf);

impl Drop for ConfigCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits (bounded) for a snapshot taken after `connections` pairs were
/// torn down: `active` is read before the bytes, so zero there means final
/// bytes.
fn settled(instance: &str, connections: u64, daemon: &Daemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let snapshot = stats_json(instance);
        let backends = snapshot["backends"].as_array().expect("backends array");
        let done = backends.iter().all(|b| u64_field(b, "active") == 0)
            && backends
                .iter()
                .map(|b| u64_field(b, "successes"))
                .sum::<u64>()
                == connections;
        if done {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "connections still open in stats after 15 s: {snapshot:#}\n{}",
            daemon.logs()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// A namespace with the target and two `microsocks` backends, `alpha` and
/// `beta` (with `beta_keys` added to its entry), round robin, and a daemon
/// in front with `forwarding` keys. Fields drop in this order: the daemon
/// before its backends, the namespace last.
struct Rig {
    daemon: Daemon,
    socks: Vec<Microsocks>,
    target: SinkSource,
    ns: NetNs,
    instance: String,
    yaml: String,
}

impl Rig {
    fn start(beta_keys: &str, forwarding: &str) -> Self {
        require_root("network namespaces and BPF");
        let ns = NetNs::new().expect("netns");
        let target = SinkSource::start(&ns);
        let socks: Vec<Microsocks> = (0..2)
            .map(|_| Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks"))
            .collect();
        let instance = unique("stats");
        let yaml = two_backend_config(
            &instance,
            [
                ("alpha", socks[0].addr(), ""),
                ("beta", socks[1].addr(), beta_keys),
            ],
            2,
            &format!("connect_timeout: 2s, handshake_timeout: 5s, {forwarding}"),
        );
        let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
        Self {
            daemon,
            socks,
            target,
            ns,
            instance,
            yaml,
        }
    }
}

fn run_engine(engine: &str) {
    let Rig {
        ns,
        target,
        socks,
        instance,
        yaml,
        daemon,
    } = Rig::start("", &format!("engine: {engine}, offload_after_time: 10s"));
    let proxy = daemon.listener("socks");
    let target_addr = target.0.addr();

    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|seed| {
            ns.spawn(move || transfer(proxy, target_addr, seed))
                .expect("spawn client in netns")
        })
        .collect();
    let (mut sent, mut received) = (0u64, 0u64);
    for client in clients {
        let (up, down) = client
            .join()
            .unwrap_or_else(|_| panic!("client failed:\n{}", daemon.logs()))
            .expect("netns");
        sent += up;
        received += down;
    }
    assert_eq!(sent, CONNECTIONS * UP_PER_CONNECTION);
    assert_eq!(received, CONNECTIONS * DOWN_PER_CONNECTION);

    let snapshot = settled(&instance, CONNECTIONS, &daemon);

    assert_eq!(snapshot["instance"], instance.as_str());
    assert_eq!(snapshot["engine"], engine, "{snapshot:#}");
    assert_eq!(
        snapshot["counters"]["accepted"], CONNECTIONS,
        "{snapshot:#}"
    );
    let backends = snapshot["backends"].as_array().expect("backends array");
    let mut names: Vec<&str> = backends
        .iter()
        .map(|b| b["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alpha", "beta"], "{snapshot:#}");
    let sum = |key: &str| backends.iter().map(|b| u64_field(b, key)).sum::<u64>();
    assert_eq!(sum("attempts"), CONNECTIONS, "{snapshot:#}");
    assert_eq!(sum("bytes_up"), sent, "bytes up, {engine}: {snapshot:#}");
    assert_eq!(
        sum("bytes_down"),
        received,
        "bytes down, {engine}: {snapshot:#}"
    );
    for backend in backends {
        let carried = u64_field(backend, "successes");
        assert!(carried > 0, "round robin skipped a backend: {snapshot:#}");
        assert_eq!(
            u64_field(backend, "bytes_up"),
            carried * UP_PER_CONNECTION,
            "{backend}"
        );
        assert_eq!(
            u64_field(backend, "bytes_down"),
            carried * DOWN_PER_CONNECTION,
            "{backend}"
        );
        assert_eq!(backend["state"], "closed", "{backend}");
        assert!(backend["success_rate"].as_f64().is_some(), "{backend}");
    }
    // Each pair moved far more than the user-space copy's 64 KiB: the
    // engine carried every one to its end.
    let pairs = &snapshot["counters"]["pairs_finished"];
    assert_eq!(
        (pairs[engine].as_u64(), pairs["relay"].as_u64()),
        (Some(CONNECTIONS), Some(0)),
        "{snapshot:#}"
    );

    // One short exchange (an empty upload, the 32-byte digest back) ends
    // within the copy's budget and never reaches the engine. (The config's
    // 10 s time budget keeps a slow moment of a loaded machine from handing
    // it over; the long pairs go by their bytes.)
    let digest = ns
        .run(move || {
            let mut stream =
                socks_connect(proxy, &Target::Addr(target_addr), None).expect("SOCKS5 CONNECT");
            stream.write_all(&[0; 16]).expect("header");
            let mut back = Vec::new();
            stream.read_to_end(&mut back).expect("digest");
            back
        })
        .expect("netns");
    assert_eq!(digest.len(), 32);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let snapshot = stats_json(&instance);
        let pairs = &snapshot["counters"]["pairs_finished"];
        if pairs["relay"].as_u64() == Some(1) {
            assert_eq!(pairs[engine].as_u64(), Some(CONNECTIONS), "{snapshot:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the short pair is not counted as relay after 15 s: {snapshot:#}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    // The table, through the config file as `cargo xtask demo` asks.
    let copy = ConfigCopy(std::env::temp_dir().join(format!("{instance}-stats.yaml")));
    std::fs::write(&copy.0, &yaml).expect("write config copy");
    let config = copy.0.to_str().expect("utf-8 path");
    let table = stats(&["--config", config]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success(),
        "stats --config: {}",
        String::from_utf8_lossy(&table.stderr)
    );
    assert!(
        text.contains("alpha") && text.contains("beta"),
        "table lacks a backend:\n{text}"
    );
    assert!(text.contains(&instance), "{text}");

    // A clean stop removes the status file: the instance is gone for stats.
    let status_file = PathBuf::from(format!("/run/balancer/{instance}/status.json"));
    assert!(status_file.exists());
    drop(daemon);
    assert!(
        !status_file.exists(),
        "{} left behind",
        status_file.display()
    );
    let after = stats(&["--instance", &instance]);
    assert_eq!(after.status.code(), Some(1));
    // The backends outlive the daemon.
    drop(socks);
}

/// `engine: splice` on one backend of a sockmap daemon: its connections are
/// carried by splice (no skb of theirs passes the verdict), the other
/// backend's by sockmap, and both count their bytes to the byte.
#[test]
fn a_backend_with_engine_splice_is_carried_by_splice_beside_sockmap() {
    let rig = Rig::start(", engine: splice", "engine: sockmap");
    let (ns, instance, daemon) = (&rig.ns, &rig.instance, &rig.daemon);
    let proxy = daemon.listener("socks");
    let target_addr = rig.target.0.addr();
    // One at a time: round robin alternates alpha and beta.
    for seed in 0..4 {
        ns.run(move || transfer(proxy, target_addr, seed))
            .expect("netns");
    }
    let snapshot = settled(instance, 4, daemon);
    let pairs = &snapshot["counters"]["pairs_finished"];
    assert_eq!(
        (pairs["sockmap"].as_u64(), pairs["splice"].as_u64()),
        (Some(2), Some(2)),
        "{snapshot:#}"
    );
    for backend in snapshot["backends"].as_array().expect("backends") {
        assert_eq!(u64_field(backend, "successes"), 2, "{backend}");
        assert_eq!(
            u64_field(backend, "bytes_down"),
            2 * DOWN_PER_CONNECTION,
            "{backend}"
        );
        let kernel = &backend["sockmap"];
        let skbs = u64_field(kernel, "skbs_up") + u64_field(kernel, "skbs_down");
        match backend["name"].as_str() {
            Some("alpha") => assert!(skbs > 0, "{backend}"),
            Some("beta") => assert_eq!(skbs, 0, "{backend}"),
            other => panic!("unexpected backend {other:?}"),
        }
    }
}

#[test]
fn sockmap_bytes_per_backend_equal_what_clients_moved() {
    run_engine("sockmap");
}

#[test]
fn splice_bytes_per_backend_equal_what_clients_moved() {
    run_engine("splice");
}

#[test]
fn stats_for_an_instance_that_is_not_running_fails_naming_it() {
    let instance = unique("nx");
    let output = stats(&["--instance", &instance]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&instance) && stderr.contains("not running"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("/run/balancer/{instance}/status.json")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn stats_help_teaches_with_examples() {
    let output = stats(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in ["--instance", "--json", "--watch", "Examples:"] {
        assert!(help.contains(needle), "{needle} missing:\n{help}");
    }
}

/// Where a daemon without `metrics:` in its config serves `/metrics` and
/// the JSON API (inside the test's namespace).
const METRICS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(LO), 9898);

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: {METRICS}\r\n\r\n")
}

/// The daemon's advice log lines so far.
fn advice_lines(daemon: &Daemon) -> Vec<String> {
    daemon.log_lines(&["small skbs"])
}

/// A backend whose downloads reach the verdict in 1 KiB skbs is advised
/// `engine: splice`: one warning naming it and its mean, `splice_advised` in
/// the daemon's status API and `/metrics` and in `stats --json` (read from
/// the pins), a note under the `stats` table. Its neighbour, writing
/// 64 KiB at a time, is not; and the warning is not repeated at the next look.
#[test]
fn a_backend_whose_downloads_come_in_small_skbs_is_advised_splice_once() {
    require_root("network namespaces and BPF");
    let ns = NetNs::new().expect("netns");
    let small = ChunkedBackend::start(&ns, 1024);
    let large = ChunkedBackend::start(&ns, 64 << 10);
    let instance = unique("advice");
    let yaml = two_backend_config(
        &instance,
        [("small", small.addr(), ""), ("large", large.addr(), "")],
        1,
        "engine: sockmap, connect_timeout: 2s, handshake_timeout: 5s",
    );
    let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
    let proxy = daemon.listener("socks");
    // Round robin: one download from each.
    for _ in 0..2 {
        chunked_download(&ns, proxy);
    }

    // The daemon looks every 10 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    while advice_lines(&daemon).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    let lines = advice_lines(&daemon);
    assert_eq!(lines.len(), 1, "one warning: {lines:#?}\n{}", daemon.logs());
    assert!(
        lines[0].contains("WARN") && lines[0].contains("backend=\"small\""),
        "{}",
        lines[0]
    );
    let mean: u64 = lines[0]
        .split("bytes_per_skb=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes_per_skb in {}", lines[0]));
    assert!((1000..=1100).contains(&mean), "{}", lines[0]);

    // Under sockmap `stats` reads the pins; the daemon's own snapshot (what
    // the dashboard polls and /metrics exports) must judge the same.
    let (status, _, api) = http_exchange(&ns, METRICS, get("/api/v1/status"));
    assert_eq!(status, 200, "{api}");
    let api: Value = serde_json::from_str(&api).expect("status JSON");
    let (status, _, metrics) = http_exchange(&ns, METRICS, get("/metrics"));
    assert_eq!(status, 200, "{metrics}");
    for (name, advised) in [("small", true), ("large", false)] {
        let live = api["backends"]
            .as_array()
            .and_then(|backends| backends.iter().find(|b| b["name"] == name))
            .unwrap_or_else(|| panic!("{name} missing in {api}"));
        assert_eq!(live["splice_advised"], advised, "{live}");
        assert_eq!(live["engine"], "auto", "{live}");
        let sample = format!(
            "balancer_backend_splice_advised{{backend=\"{name}\",scope=\"\"}} {}",
            u8::from(advised)
        );
        assert!(metrics.lines().any(|l| l == sample), "{sample}:\n{metrics}");
    }

    let snapshot = stats_json(&instance);
    for backend in snapshot["backends"].as_array().expect("backends") {
        let kernel = &backend["sockmap"];
        let per_skb = u64_field(kernel, "bytes_down") / u64_field(kernel, "skbs_down").max(1);
        match backend["name"].as_str() {
            Some("small") => {
                assert_eq!(backend["splice_advised"], true, "{backend}");
                assert!(per_skb < 4096, "{backend}");
            }
            Some("large") => {
                assert_eq!(backend["splice_advised"], false, "{backend}");
                assert!(per_skb >= 4096, "{backend}");
                assert!(
                    u64_field(kernel, "bytes_down") >= 64 << 20,
                    "large was judged too: {backend}"
                );
            }
            other => panic!("unexpected backend {other:?}"),
        }
    }
    let output = stats(&["--instance", &instance]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let notes: Vec<&str> = text.lines().filter(|l| l.starts_with("advice:")).collect();
    assert_eq!(notes.len(), 1, "{text}");
    assert!(
        notes[0].starts_with("advice: small's downloads come in 1.0 KiB skbs"),
        "{text}"
    );

    // Past the next look: still the one warning.
    thread::sleep(Duration::from_millis(10_500));
    assert_eq!(advice_lines(&daemon).len(), 1, "{}", daemon.logs());
    drop(daemon);
    drop((small, large));
}
