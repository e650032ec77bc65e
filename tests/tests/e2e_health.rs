//! Black-box: circuit breakers, probes and failover of the `balancer` binary
//! against fault backends (refusing, blackholing SYNs, closing mid-handshake,
//! answering REP=0x05, too slow) beside three healthy `microsocks`, all on
//! loopback of a throw-away namespace (its iptables DROP rule dies with it).

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use balancer_tests::{Microsocks, NetNs, require_root};
use support::{
    ChecksumTarget, Daemon, Fault, FaultBackend, Target, free_port, ping, sh, socks_connect, unique,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn one_connection(proxy: SocketAddr, target: SocketAddr) -> Result<(), String> {
    let mut stream =
        socks_connect(proxy, &Target::Addr(target), None).map_err(|e| format!("{e:?}"))?;
    ping(&mut stream).map_err(|e| e.to_string())
}

/// `total` connections, `parallel` at a time, within `within`; returns the
/// number that failed.
fn load(ns: &NetNs, proxy: SocketAddr, target: SocketAddr, total: usize, parallel: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (next, failed) = (next.clone(), failed.clone());
            ns.spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                    if let Err(error) = one_connection(proxy, target) {
                        eprintln!("client failure: {error}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .expect("spawn in netns")
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker").expect("netns");
    }
    assert!(
        next.load(Ordering::Relaxed) >= total,
        "load did not finish within 120 s"
    );
    failed.load(Ordering::Relaxed)
}

#[test]
fn breakers_open_on_every_fault_then_2000_clients_see_no_failure_and_probes_close_them_again() {
    require_root("network namespaces, iptables and BPF");
    let ns = NetNs::new().expect("netns");
    let target_guard = ChecksumTarget::start(&ns, IpAddr::V4(LO)).expect("target");
    let target = target_guard.addr();
    let port = |_| SocketAddr::from((LO, free_port(&ns, LO)));
    let refusing = port(0);
    let blackhole = port(1);
    sh(
        &ns,
        "iptables",
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &blackhole.port().to_string(),
            "-j",
            "DROP",
        ],
    )
    .expect("DROP rule");
    let faults = [
        Fault::CloseMidHandshake,
        Fault::Refuses05,
        Fault::Slow {
            hold: Duration::from_secs(5),
        },
    ];
    let mut fault_backends: Vec<FaultBackend> = faults
        .iter()
        .enumerate()
        .map(|(i, fault)| FaultBackend::start(&ns, port(i), *fault).expect("fault backend"))
        .collect();
    let mut healthy: Vec<Microsocks> = (0..3)
        .map(|_| Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks"))
        .collect();
    let faulty: Vec<SocketAddr> = [refusing, blackhole]
        .into_iter()
        .chain(fault_backends.iter().map(FaultBackend::addr))
        .collect();
    let mut yaml = format!(
        "instance: {{I}}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         balancing: {{ strategy: round_robin, max_attempts: {} }}\n\
         health: {{ circuit_threshold: 3, recovery_interval: 1s, max_recovery_interval: 4s, \
         probe: {{ target: \"{}\", interval: 1s, timeout: 1s }} }}\n\
         forwarding: {{ engine: auto, connect_timeout: 1s, handshake_timeout: 2s }}\n\
         backends:\n",
        faulty.len() + 1,
        target,
    );
    for addr in faulty
        .iter()
        .chain(healthy.iter().map(|s| s.addr()).collect::<Vec<_>>().iter())
    {
        yaml.push_str(&format!("  - {{ address: \"{addr}\" }}\n"));
    }
    let instance = unique("health");
    let yaml = yaml.replace("{I}", &instance);
    let mut daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
    let proxy = daemon.listener("socks");

    // Probes and the first clients open the five breakers.
    let opened = |daemon: &Daemon, addr: &SocketAddr| daemon.breaker_changed(*addr, "open");
    let start = Instant::now();
    let mut warmup_failures = 0;
    let mut warmup = 0;
    while !faulty.iter().all(|addr| opened(&daemon, addr)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "breakers not all open within 30 s:\n{}",
            daemon.logs()
        );
        let result = ns
            .run(move || one_connection(proxy, target))
            .expect("netns");
        warmup += 1;
        warmup_failures += usize::from(result.is_err());
    }
    println!(
        "breakers open after {:?}, {warmup} warm-up connections, {warmup_failures} failed",
        start.elapsed()
    );
    assert_eq!(
        warmup_failures, 0,
        "max_attempts covers every faulty backend plus a healthy one"
    );

    let failures = load(&ns, proxy, target, 2000, 16);
    assert_eq!(
        failures, 0,
        "client-visible failures with the breakers open"
    );
    assert!(daemon.is_running());

    // A killed healthy backend: new connections fail over at once.
    drop(healthy.pop());
    let began = Instant::now();
    let failures = load(&ns, proxy, target, 100, 1);
    assert_eq!(failures, 0, "after a backend was killed");
    println!(
        "100 sequential connections after a kill took {:?}",
        began.elapsed()
    );

    // Heal every fault with a healthy microsocks on the same address.
    let healed_at = Instant::now();
    sh(
        &ns,
        "iptables",
        &[
            "-D",
            "INPUT",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &blackhole.port().to_string(),
            "-j",
            "DROP",
        ],
    )
    .expect("remove DROP rule");
    fault_backends.clear();
    let healed: Vec<Microsocks> = faulty
        .iter()
        .map(|addr| Microsocks::start_in(&ns, LO, addr.port()).expect("microsocks in place"))
        .collect();
    // Backoff caps at 4 s; a probe every 1 s with a 1 s timeout: 4 + 2 s,
    // doubled for the slow machine.
    let closed = |daemon: &Daemon, addr: &SocketAddr| daemon.breaker_changed(*addr, "closed");
    while !faulty.iter().all(|addr| closed(&daemon, addr)) {
        assert!(
            healed_at.elapsed() < Duration::from_secs(12),
            "breakers not closed within 12 s of the repair:\n{}",
            daemon.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
    println!("breakers closed {:?} after the repair", healed_at.elapsed());
    drop(healed);
}

#[test]
fn every_client_gets_through_when_half_the_first_picks_refuse() {
    require_root("network namespaces and BPF");
    let ns = NetNs::new().expect("netns");
    let target_guard = ChecksumTarget::start(&ns, IpAddr::V4(LO)).expect("target");
    let target = target_guard.addr();
    let refusing = SocketAddr::from((LO, free_port(&ns, LO)));
    let healthy = Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks");
    let instance = unique("fo");
    // Breakers never open here, so round robin keeps starting connections at
    // the refusing backend: each of those must fail over, unseen by the
    // client. (What that costs is measured by `cargo xtask bench --only
    // failover`.)
    let yaml = format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n  - {{ address: \"{refusing}\" }}\n  - {{ address: \"{}\" }}\n\
         balancing: {{ strategy: round_robin, max_attempts: 2 }}\n\
         health: {{ circuit_threshold: 100000, probe: {{ enabled: false }} }}\n\
         forwarding: {{ engine: auto, connect_timeout: 1s, handshake_timeout: 2s }}\n",
        healthy.addr()
    );
    let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
    let proxy = daemon.listener("socks");
    let failures: Vec<String> = ns
        .run(move || {
            (0..200)
                .filter_map(|i| {
                    let mut stream = match socks_connect(proxy, &Target::Addr(target), None) {
                        Ok(stream) => stream,
                        Err(error) => return Some(format!("connection {i}: {error:?}")),
                    };
                    ping(&mut stream)
                        .err()
                        .map(|e| format!("connection {i}: ping {e}"))
                })
                .collect()
        })
        .expect("netns");
    assert!(failures.is_empty(), "client-visible failures: {failures:?}");
}

#[test]
fn fault_backends_misbehave_as_designed() {
    require_root("network namespaces");
    let ns = NetNs::new().expect("netns");
    let target = SocketAddr::from((LO, 9));
    let check = |fault: Fault| {
        let backend = FaultBackend::start(&ns, SocketAddr::from((LO, free_port(&ns, LO))), fault)
            .expect("fault backend");
        let addr = backend.addr();
        ns.run(move || {
            let began = Instant::now();
            let result = socks_connect(addr, &Target::Addr(target), None);
            (format!("{result:?}"), began.elapsed())
        })
        .expect("netns")
    };
    let (closed, _) = check(Fault::CloseMidHandshake);
    assert!(closed.contains("UnexpectedEof"), "{closed}");
    let (refused, _) = check(Fault::Refuses05);
    assert_eq!(refused, "Err(Reply(5))");
    let (garbage, _) = check(Fault::Garbage);
    assert!(garbage.starts_with("Err(Method("), "{garbage}");
    let (slow, waited) = check(Fault::Slow {
        hold: Duration::from_secs(3),
    });
    assert!(slow.contains("UnexpectedEof"), "{slow}");
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
}
