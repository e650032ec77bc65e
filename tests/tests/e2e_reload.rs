//! Black-box: SIGHUP reloads the config of a running `balancer` while a
//! steady client load goes through it, and no client connection fails.
//! Three `microsocks` backends A, B, C on loopback of a throw-away
//! namespace: A+B, then A+B+C (C joins and takes traffic), then C alone (A
//! and B drain and take no new connection), then an unparsable and an
//! invalid file (named in a warning, nothing changes), then a listener
//! change (named as needing a restart, the old listener keeps serving).

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use balancer_tests::{Microsocks, NetNs, require_root};
use serde_json::Value;
use support::{ChecksumTarget, Daemon, Target, free_port, ping, socks_connect, stats_json, unique};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Client threads of the background load.
const CLIENTS: usize = 4;
/// The load stops after this many connections or this long, whichever first.
const MAX_CONNECTIONS: usize = 6_000;
const MAX_LOAD: Duration = Duration::from_secs(60);
/// Pause between two connections of one client: keeps the load steady for
/// the whole test instead of spending the budget in the first seconds.
const PACE: Duration = Duration::from_millis(15);
/// How long any awaited state may take.
const WAIT: Duration = Duration::from_secs(15);

/// Connections through the proxy until stopped; counts and reports failures.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    workers: Vec<thread::JoinHandle<anyhow::Result<()>>>,
}

impl Load {
    fn start(ns: &NetNs, proxy: SocketAddr, target: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + MAX_LOAD;
        let workers = (0..CLIENTS)
            .map(|_| {
                let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
                ns.spawn(move || {
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && done.fetch_add(1, Ordering::Relaxed) < MAX_CONNECTIONS
                    {
                        let result = socks_connect(proxy, &Target::Addr(target), None)
                            .map_err(|e| format!("{e:?}"))
                            .and_then(|mut stream| ping(&mut stream).map_err(|e| e.to_string()));
                        if let Err(error) = result {
                            eprintln!("client failure: {error}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        thread::sleep(PACE);
                    }
                })
                .expect("spawn in netns")
            })
            .collect();
        Self {
            stop,
            done,
            failed,
            workers,
        }
    }

    fn is_running(&self) -> bool {
        !self.workers.iter().all(thread::JoinHandle::is_finished)
    }

    /// Stops the clients; returns (connections, failures).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().expect("client thread").expect("netns");
        }
        (
            self.done.load(Ordering::Relaxed).min(MAX_CONNECTIONS),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn config(instance: &str, listen: &str, backends: &[(&str, SocketAddr)]) -> String {
    let mut yaml = format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"{listen}\" }}\n\
         balancing: {{ strategy: round_robin, max_attempts: 3 }}\n\
         health: {{ probe: {{ enabled: false }} }}\n\
         forwarding: {{ engine: auto }}\n\
         metrics: {{ listen: null }}\n\
         backends:\n"
    );
    for (name, addr) in backends {
        yaml.push_str(&format!("  - {{ name: {name}, address: \"{addr}\" }}\n"));
    }
    yaml
}

/// Per backend name: (attempts, draining), summed over the pool and the
/// draining list.
fn backends(instance: &str) -> Vec<(String, u64, bool)> {
    let snapshot: Value = stats_json(instance);
    snapshot["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().expect("name").to_owned(),
                b["attempts"].as_u64().expect("attempts"),
                b["draining"].as_bool().expect("draining"),
            )
        })
        .collect()
}

fn attempts(backends: &[(String, u64, bool)], name: &str) -> u64 {
    backends
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, attempts, _)| attempts)
        .sum()
}

fn wait_for(what: &str, daemon: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} within {WAIT:?}; daemon log:\n{}", daemon.logs());
}

/// Rewrites the config file, sends SIGHUP and waits for the log line
/// (`needle`) that this reload produces as its `count`th such line.
fn reload(daemon: &Daemon, yaml: &str, needle: &str, count: usize) {
    std::fs::write(daemon.config_path(), yaml).expect("rewrite the config");
    daemon.reload().expect("SIGHUP");
    wait_for(&format!("log line {count} {needle:?}"), daemon, || {
        daemon.log_lines(&[needle]).len() >= count
    });
}

#[test]
fn sighup_changes_the_pool_under_load_without_a_failed_client_and_refuses_bad_files() {
    require_root("network namespaces and BPF");
    let ns = NetNs::new().expect("netns");
    let target_guard = ChecksumTarget::start(&ns, IpAddr::V4(LO)).expect("target");
    let target = target_guard.addr();
    let proxies: Vec<Microsocks> = (0..3)
        .map(|_| Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks"))
        .collect();
    let (a, b, c) = (
        ("a", proxies[0].addr()),
        ("b", proxies[1].addr()),
        ("c", proxies[2].addr()),
    );
    let instance = unique("rl");
    let listen = "127.0.0.1:0";
    let daemon =
        Daemon::start(&ns, &instance, &config(&instance, listen, &[a, b])).expect("daemon");
    let load = Load::start(&ns, daemon.listener("socks"), target);

    wait_for("A and B take traffic", &daemon, || {
        let now = backends(&instance);
        attempts(&now, "a") > 0 && attempts(&now, "b") > 0
    });

    // 1. C joins.
    reload(
        &daemon,
        &config(&instance, listen, &[a, b, c]),
        "config reloaded",
        1,
    );
    let line = daemon.log_lines(&["config reloaded"]).remove(0);
    assert!(
        line.contains("added=1") && line.contains("removed=0") && line.contains("kept=2"),
        "{line}"
    );
    wait_for("C in the stats with attempts", &daemon, || {
        attempts(&backends(&instance), "c") > 0
    });

    // 2. Only C: A and B drain and get no new connection.
    reload(
        &daemon,
        &config(&instance, listen, &[c]),
        "config reloaded",
        2,
    );
    let line = daemon.log_lines(&["config reloaded"]).remove(1);
    assert!(
        line.contains("added=0") && line.contains("removed=2") && line.contains("kept=1"),
        "{line}"
    );
    wait_for("A and B gone or draining in the stats", &daemon, || {
        backends(&instance)
            .iter()
            .all(|(name, _, draining)| name == "c" || *draining)
    });
    // The status file is rewritten every second: let it catch up first.
    thread::sleep(Duration::from_millis(1_500));
    let before = backends(&instance);
    thread::sleep(Duration::from_millis(2_500));
    let after = backends(&instance);
    for name in ["a", "b"] {
        assert!(
            attempts(&after, name) <= attempts(&before, name),
            "{name} got new connections after leaving the pool: {before:?} -> {after:?}"
        );
    }
    assert!(
        attempts(&after, "c") > attempts(&before, "c"),
        "C takes the new connections: {before:?} -> {after:?}"
    );

    // 3. A file that does not parse, then one that does not validate: a
    // warning names where, and nothing changes.
    let good = config(&instance, listen, &[c]);
    let unparsable = good.replace(
        "balancing: { strategy: round_robin, max_attempts: 3 }",
        "balancing: { strategy: round_robin, max_attempts: 3, bogus_key: 1 }",
    );
    reload(&daemon, &unparsable, "config not reloaded", 1);
    let line = daemon.log_lines(&["config not reloaded"]).remove(0);
    let path = daemon.config_path().display().to_string();
    assert!(
        line.contains(&format!("{path}:4:")) && line.contains("bogus_key"),
        "the warning names file, line and key: {line}"
    );
    let invalid = good.replace("max_attempts: 3", "max_attempts: 0");
    reload(&daemon, &invalid, "config not reloaded", 2);
    let line = daemon.log_lines(&["config not reloaded"]).remove(1);
    assert!(
        line.contains(&path) && line.contains("balancing.max_attempts"),
        "the warning names file and key: {line}"
    );
    let before = backends(&instance);
    thread::sleep(Duration::from_millis(2_500));
    let after = backends(&instance);
    let live = |list: &[(String, u64, bool)]| -> Vec<String> {
        list.iter()
            .filter(|(_, _, draining)| !draining)
            .map(|(name, _, _)| name.clone())
            .collect()
    };
    assert_eq!(live(&after), ["c"], "the pool is unchanged: {after:?}");
    assert!(
        attempts(&after, "c") > attempts(&before, "c"),
        "still serving through C: {before:?} -> {after:?}"
    );
    assert_eq!(daemon.log_lines(&["config reloaded"]).len(), 2);

    // 4. A listener change needs a restart; the rest of the file applies.
    let moved = SocketAddr::from((LO, free_port(&ns, LO)));
    reload(
        &daemon,
        &config(&instance, &moved.to_string(), &[c]),
        "config reloaded",
        3,
    );
    let warnings = daemon.log_lines(&["key=listeners", "needs a restart"]);
    assert_eq!(warnings.len(), 1, "{}", daemon.logs());
    assert!(load.is_running(), "the load outlived the test steps");
    let (connections, failures) = load.finish();
    assert_eq!(failures, 0, "of {connections} connections");
    assert!(connections > 200, "only {connections} connections ran");
    drop(daemon);
}
