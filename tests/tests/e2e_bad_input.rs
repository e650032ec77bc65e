//! Black-box: the `balancer` binary facing hostile or broken peers. Malformed
//! client handshakes, unsupported commands, silent clients, backends that
//! answer garbage or hang up, and invalid config files. After every bad peer
//! the daemon must still serve a normal client.

mod support;

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use balancer_tests::{Microsocks, NetNs, require_root};
use support::{
    ChecksumTarget, Daemon, Fault, FaultBackend, SocksError, Target, free_port, ping,
    read_to_close, socks_connect, stats_json, unique,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// One namespace with a healthy microsocks, a checksum target and the daemon.
struct World {
    daemon: Daemon,
    target: ChecksumTarget,
    _socks: Vec<Microsocks>,
    _faults: Vec<FaultBackend>,
    ns: NetNs,
}

fn config(instance: &str, backends: &[SocketAddr], max_attempts: u32) -> String {
    let mut yaml = format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n"
    );
    for backend in backends {
        yaml.push_str(&format!("  - {{ address: \"{backend}\" }}\n"));
    }
    yaml.push_str(&format!(
        "balancing: {{ strategy: round_robin, max_attempts: {max_attempts} }}\n\
         health: {{ circuit_threshold: 1000, probe: {{ enabled: false }} }}\n\
         forwarding: {{ engine: auto, connect_timeout: 1s, handshake_timeout: 2s }}\n"
    ));
    yaml
}

fn world(faults: &[Fault], healthy: usize, max_attempts: u32) -> World {
    require_root("network namespaces and BPF");
    let ns = NetNs::new().expect("netns");
    let target = ChecksumTarget::start(&ns, IpAddr::V4(LO)).expect("target");
    let mut backends = Vec::new();
    let mut fault_backends = Vec::new();
    for fault in faults {
        let addr = SocketAddr::from((LO, free_port(&ns, LO)));
        fault_backends.push(FaultBackend::start(&ns, addr, *fault).expect("fault backend"));
        backends.push(addr);
    }
    let mut socks = Vec::new();
    for _ in 0..healthy {
        let started = Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks");
        backends.push(started.addr());
        socks.push(started);
    }
    let instance = unique("bad");
    let daemon =
        Daemon::start(&ns, &instance, &config(&instance, &backends, max_attempts)).expect("daemon");
    World {
        daemon,
        target,
        _socks: socks,
        _faults: fault_backends,
        ns,
    }
}

impl World {
    fn proxy(&self) -> SocketAddr {
        self.daemon.listener("socks")
    }

    /// Sends `bytes` as a client, optionally half-closes, and returns what
    /// the daemon answered before closing (within 5 s).
    fn raw(&self, bytes: &'static [u8], half_close: bool) -> Vec<u8> {
        let proxy = self.proxy();
        self.ns
            .run(move || {
                let mut stream = TcpStream::connect(proxy).expect("connect");
                stream.write_all(bytes).expect("send");
                if half_close {
                    stream
                        .shutdown(std::net::Shutdown::Write)
                        .expect("half-close");
                }
                read_to_close(&mut stream, Duration::from_secs(5))
                    .expect("daemon closes the connection within 5 s")
            })
            .expect("netns")
    }

    fn assert_still_serves(&mut self) {
        assert!(
            self.daemon.is_running(),
            "daemon died:\n{}",
            self.daemon.logs()
        );
        let proxy = self.proxy();
        let target = self.target.addr();
        self.ns
            .run(move || {
                let mut stream = socks_connect(proxy, &Target::Addr(target), None)
                    .expect("a normal client still gets through");
                ping(&mut stream).expect("ping through the daemon");
            })
            .expect("netns");
    }
}

/// The reply code of a CONNECT-like request after a no-auth greeting.
fn reply_code(answer: &[u8]) -> Option<u8> {
    match answer {
        [5, 0, 5, code, ..] => Some(*code),
        _ => None,
    }
}

#[test]
fn malformed_client_handshakes_get_a_reply_code_or_a_clean_close_and_the_daemon_keeps_serving() {
    let mut world = world(&[], 1, 1);
    world.assert_still_serves();

    let wrong_version = world.raw(&[4, 1, 0], false);
    assert!(
        wrong_version.is_empty() || wrong_version == [5, 0xff],
        "SOCKS4 greeting: {wrong_version:?}"
    );
    world.assert_still_serves();

    let zero_methods = world.raw(&[5, 0], false);
    assert!(
        zero_methods.is_empty() || zero_methods == [5, 0xff],
        "zero methods: {zero_methods:?}"
    );
    world.assert_still_serves();

    let only_gssapi = world.raw(&[5, 1, 1], false);
    assert_eq!(only_gssapi, [5, 0xff], "no acceptable method");
    world.assert_still_serves();

    let wrong_request_version = world.raw(&[5, 1, 0, 4, 1, 0, 1, 127, 0, 0, 1, 0, 80], false);
    assert!(
        wrong_request_version == [5, 0]
            || reply_code(&wrong_request_version).is_some_and(|c| c != 0),
        "request version 4: {wrong_request_version:?}"
    );
    world.assert_still_serves();

    let zero_domain = world.raw(&[5, 1, 0, 5, 1, 0, 3, 0, 0, 80], false);
    assert!(
        zero_domain == [5, 0] || reply_code(&zero_domain).is_some_and(|c| c != 0),
        "zero-length domain: {zero_domain:?}"
    );
    world.assert_still_serves();

    // A domain length of 255 announced, 4 bytes sent, then EOF.
    let truncated_domain = world.raw(&[5, 1, 0, 5, 1, 0, 3, 255, b'a', b'b', b'c', b'd'], true);
    assert!(
        truncated_domain == [5, 0] || reply_code(&truncated_domain).is_some_and(|c| c != 0),
        "truncated domain: {truncated_domain:?}"
    );
    world.assert_still_serves();

    let truncated_ipv4 = world.raw(&[5, 1, 0, 5, 1, 0, 1, 127, 0], true);
    assert!(
        truncated_ipv4 == [5, 0] || reply_code(&truncated_ipv4).is_some_and(|c| c != 0),
        "truncated request: {truncated_ipv4:?}"
    );
    world.assert_still_serves();

    let bad_atyp = world.raw(&[5, 1, 0, 5, 1, 0, 9, 127, 0, 0, 1, 0, 80], false);
    assert!(
        bad_atyp == [5, 0] || reply_code(&bad_atyp) == Some(8),
        "unknown ATYP: {bad_atyp:?}"
    );
    world.assert_still_serves();

    let bind = world.raw(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80], false);
    assert_eq!(reply_code(&bind), Some(7), "BIND: {bind:?}");
    world.assert_still_serves();

    let udp = world.raw(&[5, 1, 0, 5, 3, 0, 1, 127, 0, 0, 1, 0, 80], false);
    assert_eq!(reply_code(&udp), Some(7), "UDP ASSOCIATE: {udp:?}");
    world.assert_still_serves();

    // Each rejection was counted under its reason (the status file is
    // rewritten every second, so wait for it to catch up).
    let expected = [
        ("malformed", 3),
        ("no_acceptable_method", 1),
        ("client_closed", 2),
        ("command_not_supported", 2),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snapshot = stats_json(world.daemon.instance());
        let failures = &snapshot["counters"]["handshake_failures"];
        let short: Vec<_> = expected
            .iter()
            .filter(|(label, at_least)| failures[label].as_u64().unwrap_or(0) < *at_least)
            .collect();
        if short.is_empty() {
            assert_eq!(
                failures["command_not_supported"], 2,
                "BIND and UDP ASSOCIATE only: {failures}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handshake failure counters short of {short:?}: {failures}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let mut world = world(&[], 1, 1);
    let proxy = world.proxy();
    let (waited, answer) = world
        .ns
        .run(move || {
            let mut stream = TcpStream::connect(proxy).expect("connect");
            let start = Instant::now();
            let answer = read_to_close(&mut stream, Duration::from_secs(8))
                .expect("closed before the 8 s read timeout");
            (start.elapsed(), answer)
        })
        .expect("netns");
    assert!(answer.is_empty(), "said nothing, got {answer:?}");
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(5),
        "handshake_timeout is 2 s, closed after {waited:?}"
    );
    world.assert_still_serves();
}

#[test]
fn a_backend_that_answers_garbage_or_hangs_up_gives_the_client_a_failure_reply() {
    for fault in [Fault::Garbage, Fault::CloseMidHandshake, Fault::Refuses05] {
        let world = world(&[fault], 0, 1);
        let proxy = world.proxy();
        let target = world.target.addr();
        let result = world
            .ns
            .run(move || socks_connect(proxy, &Target::Addr(target), None).map(drop))
            .expect("netns");
        match result {
            Err(SocksError::Reply(code)) => assert_ne!(code, 0, "{fault:?}"),
            Err(SocksError::Io(error)) => {
                panic!("{fault:?}: expected a failure reply, connection ended with {error}")
            }
            other => panic!("{fault:?}: expected a failure reply, got {other:?}"),
        }
        let mut world = world;
        assert!(world.daemon.is_running(), "{fault:?} crashed the daemon");
    }
}

#[test]
fn bad_backends_are_failed_over_and_every_client_gets_through() {
    let mut world = world(
        &[Fault::Garbage, Fault::CloseMidHandshake, Fault::Refuses05],
        1,
        4,
    );
    let proxy = world.proxy();
    let target = world.target.addr();
    let failures = world
        .ns
        .run(move || {
            (0..24)
                .filter(|_| {
                    socks_connect(proxy, &Target::Addr(target), None)
                        .map_err(|e| format!("{e:?}"))
                        .and_then(|mut s| ping(&mut s).map_err(|e| e.to_string()))
                        .is_err()
                })
                .count()
        })
        .expect("netns");
    assert_eq!(failures, 0, "logs:\n{}", world.daemon.logs());
    world.assert_still_serves();
}

/// Runs `balancer <subcommand> --config FILE` on `yaml`; returns (code, stderr).
/// The child's exit status if it exits within `within`; otherwise it is
/// killed and reaped, and `None`.
fn exit_within(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A config file: one socks5 listener on `listen`, one backend, no probes,
/// no metrics listener, then `extra` (whole lines). With it, the run
/// directory of its instance, removed on drop: a daemon that exits cleanly
/// removes it itself, one a failing test had to kill cannot.
fn one_backend_config(
    name: &str,
    listen: SocketAddr,
    backend: SocketAddr,
    extra: &str,
) -> (TempFile, RunDir) {
    let instance = unique(&name[..2]);
    let config = TempFile(std::env::temp_dir().join(format!("{}.yaml", unique(name))));
    std::fs::write(
        &config.0,
        format!(
            "instance: {instance}\n\
             listeners:\n  - {{ name: socks, mode: socks5, bind: \"{listen}\" }}\n\
             backends:\n  - {{ address: \"{backend}\" }}\n\
             health: {{ probe: {{ enabled: false }} }}\n\
             metrics: {{ listen: null }}\n{extra}",
        ),
    )
    .expect("write config");
    (
        config,
        RunDir(std::path::Path::new("/run/balancer").join(instance)),
    )
}

/// `/run/balancer/<instance>`, removed on drop.
struct RunDir(std::path::PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_cli(subcommand: &str, yaml: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("badcfg")));
    std::fs::write(&path, yaml).expect("write config");
    let mut child = std::process::Command::new(support::balancer_binary())
        .arg(subcommand)
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn balancer");
    let Some(status) = exit_within(&mut child, Duration::from_secs(10)) else {
        let _ = std::fs::remove_file(&path);
        panic!("balancer {subcommand} on an invalid config still running after 10 s");
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_file(&path);
    (status.code(), stderr)
}

#[test]
fn an_invalid_config_file_exits_2_naming_the_line_or_key_without_a_panic() {
    let cases: [(&str, &[&str]); 5] = [
        (
            "instance: badcfg\nbackends:\n  - { address: \"127.0.0.1:1081\" }\nlistners: []\n",
            &["listners", "4"],
        ),
        (
            "instance: badcfg\nbackends:\n  - { address: \"127.0.0.1:1083-1081\" }\n",
            &["3"],
        ),
        (
            "instance: badcfg\nbackends:\n  - { address: \"127.0.0.1:1081\" }\nhealth:\n  recovery_interval: 10 parsecs\n",
            &["recovery_interval", "5"],
        ),
        (
            "instance: badcfg\nbackends:\n  - { address: \"127.0.0.1:1081\" }\nbalancing: { strategy: fastest }\n",
            &["strategy", "4"],
        ),
        ("instance: badcfg\nbackends: [\n", &["line 3"]),
    ];
    for (yaml, mentions) in cases {
        for subcommand in ["check", "run"] {
            let (code, stderr) = run_cli(subcommand, yaml);
            assert_eq!(
                code,
                Some(2),
                "balancer {subcommand} on\n{yaml}\nsaid: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "panic on\n{yaml}\n{stderr}");
            for mention in mentions {
                assert!(
                    stderr.contains(mention),
                    "balancer {subcommand}: message should name {mention:?}:\n{yaml}\n{stderr}"
                );
            }
        }
    }
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `balancer run ARGS` as user `nobody` inside `ns`: no CAP_BPF, no
/// CAP_NET_ADMIN. Returns the child and its stderr lines as they come.
fn spawn_unprivileged(
    ns: &NetNs,
    binary: &std::path::Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::BufRead as _;
    let mut child = ns
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn balancer as nobody");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr piped");
    let sink = lines.clone();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().expect("log lock").push(line);
        }
    });
    (child, lines)
}

#[test]
fn without_bpf_privilege_auto_serves_through_splice_and_sockmap_exits_naming_the_cause() {
    require_root("network namespaces and setpriv to an unprivileged user");
    balancer_tests::require_command("setpriv", "util-linux");
    let ns = NetNs::new().expect("netns");
    let target = ChecksumTarget::start(&ns, IpAddr::V4(LO)).expect("target");
    let socks = Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks");
    // `nobody` may not reach the build directory; give it its own copy.
    let binary = TempFile(std::env::temp_dir().join(format!("balancer-nobody-{}", unique("b"))));
    std::fs::copy(support::balancer_binary(), &binary.0).expect("copy the binary");
    let listen = SocketAddr::from((LO, free_port(&ns, LO)));
    let (config, _run_dir) = one_backend_config("nopriv", listen, socks.addr(), "");
    for path in [&binary.0, &config.0] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let config_arg = config.0.to_str().expect("utf-8 temp path");

    // engine: sockmap must not start, and must say why.
    let (mut child, lines) = spawn_unprivileged(
        &ns,
        &binary.0,
        &["run", "--config", config_arg, "--engine", "sockmap"],
    );
    let Some(status) = exit_within(&mut child, Duration::from_secs(10)) else {
        panic!(
            "engine sockmap started without privilege: {:?}",
            lines.lock()
        );
    };
    thread::sleep(Duration::from_millis(100)); // let the reader take the last line
    let said = lines.lock().expect("log lock").join("\n");
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("missing privilege") && said.contains("CAP_BPF"),
        "the cause is not named: {said}"
    );

    // engine: auto falls back to splice with one line saying why, and serves.
    let (mut child, lines) = spawn_unprivileged(&ns, &binary.0, &["run", "--config", config_arg]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines
        .lock()
        .expect("log lock")
        .iter()
        .any(|l| l.contains("balancer started"))
    {
        if Instant::now() >= deadline || child.try_wait().expect("poll").is_some() {
            let _ = child.kill();
            panic!("auto did not start: {:?}", lines.lock());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let target = target.addr();
    let served = ns
        .run(move || {
            let mut stream =
                socks_connect(listen, &Target::Addr(target), None).map_err(|e| format!("{e:?}"))?;
            ping(&mut stream).map_err(|e| e.to_string())
        })
        .expect("netns");
    let _ = child.kill();
    let _ = child.wait();
    let said = lines.lock().expect("log lock").join("\n");
    assert!(served.is_ok(), "not served: {served:?}\n{said}");
    let fallback: Vec<_> = said
        .lines()
        .filter(|l| l.contains("because sockmap is unavailable"))
        .collect();
    assert_eq!(fallback.len(), 1, "one line saying why: {said}");
    assert!(
        fallback[0].contains("engine=\"splice\"") && fallback[0].contains("missing privilege"),
        "{said}"
    );
}

/// A daemon whose log reader went away (the process that started it with
/// stderr on a pipe exited) still stops on SIGTERM, at once and cleanly. A
/// log line it cannot write is dropped; before, the subscriber's report of
/// the failed write panicked the task that logged, here the signal task in
/// the middle of "SIGTERM: shutting down", and the daemon ran on.
#[test]
fn a_daemon_whose_log_reader_is_gone_still_stops_on_sigterm() {
    require_root("network namespaces");
    let ns = NetNs::new().expect("netns");
    let socks = Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks");
    let listen = SocketAddr::from((LO, free_port(&ns, LO)));
    let (config, _run_dir) = one_backend_config(
        "epipe",
        listen,
        socks.addr(),
        "forwarding: { engine: splice }\n",
    );
    let binary = support::balancer_binary();
    let mut child = ns
        .command(binary.to_str().expect("utf-8 binary path"))
        .args(["run", "--config", config.0.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn balancer");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns
        .run(move || TcpStream::connect(listen).is_ok())
        .expect("netns")
    {
        assert!(Instant::now() < deadline, "daemon not listening after 10 s");
        assert!(child.try_wait().expect("poll").is_none(), "daemon exited");
        thread::sleep(Duration::from_millis(20));
    }
    // The reader goes away: every later write to stderr fails with EPIPE.
    drop(child.stderr.take());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = exit_within(&mut child, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the daemon ignored SIGTERM with its log reader gone"));
    assert!(status.success(), "{status:?}");
}
