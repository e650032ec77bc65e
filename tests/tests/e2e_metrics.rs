//! Black-box: the daemon's HTTP side on `metrics.listen`. Two `microsocks`
//! backends and a checksum target on loopback of a throw-away namespace;
//! connections through the daemon, then `/metrics` must pass `promtool check
//! metrics` and its byte and connection counters must equal, exactly, what
//! the clients moved; `/health` is 200, and 503 once both backends are dead
//! and their breakers open; the JSON API lists both backends. A second test
//! has a real `prometheus` scrape the daemon until the target is up; a
//! third shows the sockmap engine's kernel queue towards a target that stops
//! reading.

mod support;

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use balancer_tests::{Microsocks, NetNs, require_command, require_root};
use serde_json::Value;
use support::{
    ChecksumTarget, Daemon, Pattern, Sha256Sum, Target, ThreadServer, expected_digest, free_port,
    http_exchange, ping, socks_connect, unique,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
const CONNECTIONS: u64 = 6;
/// What one `ping` writes after the handshake, and what it reads back.
const PING_UP: u64 = 16;
const PING_DOWN: u64 = 5;

/// `GET path` over HTTP/1.0 from inside `ns`: (status, headers, body).
fn http_get(ns: &NetNs, addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_exchange(
        ns,
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    )
}

/// Sum of every sample of `name` (exact name, any labels) whose labels
/// contain `filter`.
fn sum(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && series.contains(filter)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// `promtool check metrics < text`: it must parse (exit 1 is a parse error)
/// and lint clean, with one exception. promtool reads the classic text
/// format, not OpenMetrics: an OpenMetrics counter family `x` (HELP and TYPE
/// on `x`, samples on `x_total`) reads there as an untyped `x_total`
/// without help, which promtool reports as "x_total no help text" and exits
/// 3. Those lines, and only for families this text declares as counters
/// with a HELP, are accepted; any other finding fails the test. (The
/// Prometheus server, which parses OpenMetrics, is the other test.)
fn promtool_check(text: &str) {
    let path = std::env::temp_dir().join(format!("{}.metrics", unique("prom")));
    std::fs::write(&path, text).expect("write metrics");
    let output = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).expect("open metrics"))
        .output()
        .expect("run promtool");
    let _ = std::fs::remove_file(&path);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let openmetrics_counter = |line: &str| {
        line.strip_suffix("_total no help text")
            .is_some_and(|family| {
                text.contains(&format!("\n# TYPE {family} counter\n"))
                    && text.contains(&format!("\n# HELP {family} "))
            })
    };
    let only_counter_naming = output.status.code() == Some(3)
        && report
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(openmetrics_counter);
    assert!(
        output.status.success() || only_counter_naming,
        "promtool check metrics failed ({}):\n{report}\n--- metrics ---\n{text}",
        output.status,
    );
}

/// Two backends `alpha` and `beta`; `probe` is the `health.probe` section.
fn yaml(instance: &str, metrics: SocketAddr, backends: &[SocketAddr], probe: &str) -> String {
    format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n  - {{ name: alpha, address: \"{}\" }}\n  - {{ name: beta, address: \"{}\" }}\n\
         balancing: {{ strategy: round_robin, max_attempts: 2 }}\n\
         health: {{ circuit_threshold: 1, recovery_interval: 60s, max_recovery_interval: 60s, \
         panic_mode: false, probe: {probe} }}\n\
         forwarding: {{ engine: auto, connect_timeout: 1s, handshake_timeout: 2s }}\n\
         metrics: {{ listen: \"{metrics}\" }}\n",
        backends[0], backends[1],
    )
}

#[test]
fn metrics_pass_promtool_and_count_exactly_what_clients_moved_and_health_follows_breakers() {
    require_root("network namespaces and BPF");
    require_command("promtool", "prometheus");
    let ns = NetNs::new().expect("netns");
    let target = ChecksumTarget::start(&ns, IpAddr::V4(LO)).expect("target");
    let mut socks: Vec<Microsocks> = (0..2)
        .map(|_| Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks"))
        .collect();
    let metrics = SocketAddr::from((LO, free_port(&ns, LO)));
    let instance = unique("metrics");
    let backends: Vec<SocketAddr> = socks.iter().map(Microsocks::addr).collect();
    // Passive failures never open the last admitting breaker (the pool
    // keeps serving); failed probes do, so probes are on for the 503 part.
    let probe = format!(
        "{{ target: \"{}\", interval: 1s, timeout: 1s }}",
        target.addr()
    );
    let yaml = yaml(&instance, metrics, &backends, &probe);
    let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
    assert!(
        daemon.log_contains("metrics listening") && daemon.log_contains(&metrics.to_string()),
        "{}",
        daemon.logs()
    );
    let proxy = daemon.listener("socks");
    let target_addr = target.addr();

    let (status, _, body) = http_get(&ns, metrics, "/health");
    assert_eq!(status, 200, "{body}");

    for _ in 0..CONNECTIONS {
        ns.run(move || {
            let mut stream =
                socks_connect(proxy, &Target::Addr(target_addr), None).expect("SOCKS5 CONNECT");
            ping(&mut stream).expect("ping through the daemon");
        })
        .expect("netns");
    }

    // Wait (bounded) for a scrape taken after every pair was torn down:
    // no active connection and every success counted, so the bytes are final.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (head, text) = loop {
        let (status, head, text) = http_get(&ns, metrics, "/metrics");
        assert_eq!(status, 200, "{text}");
        let settled = sum(&text, "balancer_backend_active_connections", "") == 0.0
            && sum(&text, "balancer_backend_successes_total", "") == CONNECTIONS as f64
            && sum(&text, "balancer_backend_bytes_total", "direction=\"down\"")
                == (CONNECTIONS * PING_DOWN) as f64;
        if settled {
            break (head, text);
        }
        assert!(
            Instant::now() < deadline,
            "connections not settled in /metrics after 15 s:\n{text}\n{}",
            daemon.logs()
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    promtool_check(&text);

    assert_eq!(
        sum(&text, "balancer_connections_accepted_total", ""),
        CONNECTIONS as f64,
        "{text}"
    );
    assert_eq!(
        sum(&text, "balancer_backend_connections_total", ""),
        CONNECTIONS as f64,
        "{text}"
    );
    assert_eq!(
        sum(&text, "balancer_backend_bytes_total", "direction=\"up\""),
        (CONNECTIONS * PING_UP) as f64,
        "{text}"
    );
    assert_eq!(
        sum(&text, "balancer_backend_bytes_total", "direction=\"down\""),
        (CONNECTIONS * PING_DOWN) as f64,
        "{text}"
    );
    assert_eq!(
        sum(&text, "balancer_backend_latency_seconds_count", ""),
        CONNECTIONS as f64,
        "{text}"
    );
    for name in ["alpha", "beta"] {
        let labels = format!("backend=\"{name}\",scope=\"\"");
        assert!(
            sum(&text, "balancer_backend_connections_total", &labels) > 0.0,
            "round robin skipped {name}:\n{text}"
        );
        assert_eq!(
            sum(
                &text,
                "balancer_backend_breaker_state",
                &format!("{labels},state=\"closed\"")
            ),
            1.0,
            "{text}"
        );
    }
    assert!(text.contains("balancer_info{"), "{text}");
    // The engine here is sockmap: the verdict's share of the bytes and the
    // skbs that carried it are exported too (the relay's first bytes of
    // each connection are not in them).
    assert!(
        text.contains("engine=\"sockmap\"")
            && text.contains("# TYPE balancer_backend_sockmap_skbs counter"),
        "{text}"
    );
    let kernel_down = sum(
        &text,
        "balancer_backend_sockmap_bytes_total",
        "direction=\"down\"",
    );
    let skbs_down = sum(
        &text,
        "balancer_backend_sockmap_skbs_total",
        "direction=\"down\"",
    );
    assert!(
        kernel_down <= (CONNECTIONS * PING_DOWN) as f64 && skbs_down <= kernel_down,
        "{text}"
    );

    // The JSON API.
    let (status, _, body) = http_get(&ns, metrics, "/api/v1/backends");
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).expect("backends JSON");
    let mut names: Vec<&str> = list
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alpha", "beta"], "{body}");
    let (status, _, body) = http_get(&ns, metrics, "/api/v1/status");
    assert_eq!(status, 200, "{body}");
    let snapshot: Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(snapshot["counters"]["accepted"], CONNECTIONS, "{body}");
    let (status, _, body) = http_get(&ns, metrics, "/api/v1/backends/alpha");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http_get(&ns, metrics, "/api/v1/backends/nope");
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");

    // Both backends die; one more client fails on both (threshold 1), and
    // failed probes open whichever breaker the last-backend guard kept
    // closed; 60 s before a trial.
    socks.clear();
    ns.run(move || socks_connect(proxy, &Target::Addr(target_addr), None).is_err())
        .expect("netns")
        .then_some(())
        .expect("a client with every backend dead fails");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = http_get(&ns, metrics, "/health");
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health still {status} ({body}) 10 s after both backends died:\n{}",
            daemon.logs()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (_, _, text) = http_get(&ns, metrics, "/metrics");
    assert_eq!(
        sum(&text, "balancer_backend_breaker_state", "state=\"open\""),
        2.0,
        "{text}"
    );
    assert_eq!(
        sum(&text, "balancer_connections_exhausted_total", ""),
        1.0,
        "{text}"
    );
    promtool_check(&text);
    drop(daemon);
}

/// A `prometheus` server in a namespace; killed and its storage removed on
/// drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_until_the_target_is_up() {
    require_root("network namespaces and BPF");
    require_command("prometheus", "prometheus");
    let ns = NetNs::new().expect("netns");
    let socks: Vec<Microsocks> = (0..2)
        .map(|_| Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks"))
        .collect();
    let metrics = SocketAddr::from((LO, free_port(&ns, LO)));
    let instance = unique("prom");
    let backends: Vec<SocketAddr> = socks.iter().map(Microsocks::addr).collect();
    let yaml = yaml(&instance, metrics, &backends, "{ enabled: false }");
    let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");

    let dir = std::env::temp_dir().join(format!("{instance}-prometheus"));
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\n\
             scrape_configs:\n  - job_name: balancer\n    static_configs:\n      - targets: [\"{metrics}\"]\n"
        ),
    )
    .expect("prometheus config");
    let web = SocketAddr::from((LO, free_port(&ns, LO)));
    let child = ns
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prometheus = Prometheus { child, dir };

    // Bounded: prometheus starts, scrapes every second, and `up` turns 1.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no answer yet");
    loop {
        let answer = ns
            .run(move || -> std::io::Result<String> {
                let mut stream = TcpStream::connect_timeout(&web, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.write_all(
                    format!("GET /api/v1/query?query=up HTTP/1.0\r\nHost: {web}\r\n\r\n")
                        .as_bytes(),
                )?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            })
            .expect("netns");
        if let Ok(response) = answer {
            let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if let Ok(json) = serde_json::from_str::<Value>(body) {
                let up = json["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|series| {
                        series["metric"]["instance"] == metrics.to_string()
                            && series["value"][1] == "1"
                    });
                if up {
                    break;
                }
            }
            last = response;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not see the daemon up within 60 s; last answer:\n{last}\n{}",
            daemon.logs()
        );
        thread::sleep(Duration::from_millis(500));
    }
    drop(daemon);
}

/// A target that reads nothing until told to: under sockmap the kernel takes
/// the client's bytes onto the backend socket's psock with no limit (see the
/// README), and the daemon must say so where an operator looks: the
/// `balancer_kernel_queue_*` series, a line of `balancer stats`, one warning
/// in the log naming the connection. The bytes still arrive intact once the
/// target reads.
#[test]
fn a_target_that_stops_reading_shows_as_a_kernel_queue_in_metrics_stats_and_the_log() {
    require_root("network namespaces and BPF");
    const LEN: u64 = 160 << 20;
    const SEED: u64 = 17;
    let ns = NetNs::new().expect("netns");
    let reading = Arc::new(AtomicBool::new(false));
    let (digests, digest) = mpsc::channel();
    let go = Arc::clone(&reading);
    let target = ThreadServer::start(&ns, SocketAddr::from((LO, 0)), move |mut stream| {
        while !go.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(10));
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut sum = Sha256Sum::start().expect("run sha256sum");
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sum.update(&buf[..n]).expect("feed sha256sum"),
            }
        }
        let _ = digests.send(sum.finish().expect("sha256sum output"));
    })
    .expect("target");
    let backend = Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks");
    let metrics = SocketAddr::from((LO, free_port(&ns, LO)));
    let instance = unique("kqueue");
    let yaml = format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n  - {{ name: alpha, address: \"{}\" }}\n\
         health: {{ probe: {{ enabled: false }} }}\n\
         forwarding: {{ engine: sockmap }}\n\
         metrics: {{ listen: \"{metrics}\" }}\n",
        backend.addr(),
    );
    let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
    let proxy = daemon.listener("socks");
    let target_addr = target.addr();
    let client = ns
        .spawn(move || {
            let mut stream =
                socks_connect(proxy, &Target::Addr(target_addr), None).expect("SOCKS5 CONNECT");
            Pattern::new(SEED).write(&mut stream, LEN).expect("upload");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            // Held open until the target has read everything.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        })
        .expect("spawn the client");
    // Nothing reads at the far end, yet the upload keeps leaving the client:
    // past the socket buffers on the way (the daemon's 2 x 32 MiB, the
    // backend's and the target's), the rest waits on the psock.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (_, _, text) = http_get(&ns, metrics, "/metrics");
        if sum(&text, "balancer_kernel_queue_largest_bytes", "") > (LEN - (64 << 20)) as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the kernel queue stayed below the upload's size less 64 MiB:\n{text}\n{}",
            daemon.logs()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sum(&text, "balancer_kernel_queue_warnings_total", ""), 1.0);
    // One per 16 MiB redirected.
    assert!(
        sum(&text, "balancer_kernel_queue_checks_total", "") >= 5.0,
        "{text}"
    );
    let stats = support::stats(&["--instance", &instance]);
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.contains("kernel queue towards slow receivers: largest")
            && stats.contains("directions over 64.0 MiB 1"),
        "{stats}"
    );
    let warnings = daemon.log_lines(&["the receiving side is slower"]);
    assert_eq!(warnings.len(), 1, "{}", daemon.logs());
    assert!(
        warnings[0].contains("direction=\"up\"")
            && warnings[0].contains(&backend.addr().to_string()),
        "{}",
        warnings[0]
    );
    reading.store(true, Ordering::Relaxed);
    let got = digest
        .recv_timeout(Duration::from_secs(60))
        .expect("the target reads everything");
    assert_eq!(got, expected_digest(LEN, SEED), "upload corrupted");
    drop(daemon);
    let _ = client.join();
}
