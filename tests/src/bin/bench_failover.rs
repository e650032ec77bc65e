//! `bench_failover`: what failover and breakers cost a client, measured
//! through the real `balancer` binary in a throw-away network namespace
//! (loopback there), against baselines of the same run:
//!
//! - `microsocks direct`: connect + SOCKS5 CONNECT straight to one backend;
//! - `balancer, healthy`: the same through balancer with one healthy backend;
//! - `balancer, failover`: balancer with a refusing backend beside the
//!   healthy one, round robin, breaker disabled, so every other connection
//!   starts at the refusing backend and fails over; the daemon's debug log
//!   says which connections took two attempts;
//! - the first two again with a client that waits 1 ms between the method
//!   selection and its request, which is what a client 1 ms away looks like
//!   to the proxy for that round trip: the balancer opens its backend
//!   during it.
//!
//! It also times a backend's death until its breaker opens (clients keep
//! connecting), and its recovery until its breaker is closed again.
//!
//! Usage: [`USAGE`] (`--help` prints it); through xtask,
//! `cargo xtask bench --only NAME -- ARGS`.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use balancer_tests::{Microsocks, NetNs, require_root};
use serde::Serialize;
use support::{
    ChecksumTarget, Daemon, Target, free_port, socks_connect, socks_connect_pausing, unique,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The distant client's wait between method selection and request.
const CLIENT_AWAY: Duration = Duration::from_millis(1);
/// Upper bound on any wait for a breaker transition.
const BREAKER_WAIT: Duration = Duration::from_secs(30);

const USAGE: &str = "bench_failover [--json OUT] [--runs 5] [--connections 200]";

#[derive(Debug)]
struct Args {
    json: Option<String>,
    runs: usize,
    connections: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        json: None,
        runs: 5,
        connections: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--json" => args.json = Some(value()?),
            "--runs" => args.runs = value()?.parse().context("--runs")?,
            "--connections" => args.connections = value()?.parse().context("--connections")?,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(args.connections >= 2, "--connections must be at least 2");
    Ok(args)
}

/// Setup times (connect + SOCKS5 CONNECT until the success reply) of
/// `count` sequential connections through `proxy`, in microseconds, by a
/// client that waits `pause` before its request.
fn setup_times(
    ns: &NetNs,
    proxy: SocketAddr,
    target: SocketAddr,
    count: usize,
    pause: Duration,
) -> Result<Vec<f64>> {
    ns.run(move || {
        (0..count)
            .map(|i| {
                let began = Instant::now();
                let stream = socks_connect_pausing(proxy, &Target::Addr(target), None, pause)
                    .map_err(|e| anyhow::anyhow!("connection {i} through {proxy}: {e:?}"))?;
                let took = began.elapsed();
                drop(stream);
                Ok(took.as_secs_f64() * 1e6)
            })
            .collect::<Result<Vec<_>>>()
    })
    .context("enter netns")?
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(f64::NAN)
}

#[derive(Debug, Serialize)]
struct Row {
    case: &'static str,
    /// Median over runs of each run's median / p99 (microseconds).
    p50_us: f64,
    p99_us: f64,
    /// Median over runs of (this case's p50 - its baseline's p50, the
    /// `microsocks direct` row with the same client).
    added_p50_us: f64,
    /// Each run's p50, for the spread.
    run_p50_us: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Breaker {
    circuit_threshold: u32,
    recovery_interval_ms: u64,
    /// Backend killed -> its breaker logged `open`, per run.
    death_to_open_ms: Vec<f64>,
    /// Backend back -> breaker `closed` again (round robin then hands it the
    /// next connection or the one after).
    recovery_to_closed_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    runs: usize,
    connections_per_case: usize,
    rows: Vec<Row>,
    breaker: Breaker,
}

fn config(instance: &str, backends: &[SocketAddr], extra: &str) -> String {
    let list: String = backends
        .iter()
        .map(|addr| format!("  - {{ address: \"{addr}\" }}\n"))
        .collect();
    format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n{list}\
         balancing: {{ strategy: round_robin, max_attempts: 2 }}\n\
         forwarding: {{ engine: auto, connect_timeout: 1s, handshake_timeout: 2s }}\n{extra}"
    )
}

/// What the daemon logs per connection once a backend answered; it names
/// how many attempts the connection took, which tells failed-over
/// connections apart without guessing from their timing.
const LOG_FILTER: &str = "info,balancer::session=debug";

/// Attempts per connection, in the order the daemon served them.
/// How many attempts each of the first `clients` connections took, from the
/// daemon's "backend ready" lines. The daemon writes a line before its
/// client's reply, but the thread that collects its stderr may not have read
/// the last one yet when the client is done: wait for it, for a bounded time.
fn attempts(daemon: &Daemon, clients: usize) -> Result<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attempts: Vec<u32> = daemon
            .log_lines(&["backend ready"])
            .iter()
            .filter_map(|line| {
                line.split(" attempts=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        if attempts.len() >= clients || Instant::now() >= deadline {
            ensure!(
                attempts.len() == clients,
                "daemon logged {} connections, the client made {clients}",
                attempts.len(),
            );
            return Ok(attempts);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The latency cases: name, and the index of its baseline among them.
const CASES: [(&str, usize); 6] = [
    ("microsocks direct", 0),
    ("balancer, one healthy backend", 0),
    ("balancer, first pick healthy", 0),
    ("balancer, first pick refused (failover)", 0),
    ("microsocks direct, client 1 ms away", 4),
    ("balancer, one healthy backend, client 1 ms away", 4),
];

/// One run of the latency cases, in the order of [`CASES`].
fn latency_run(connections: usize) -> Result<[Vec<f64>; 6]> {
    let ns = NetNs::new()?;
    let target = ChecksumTarget::start(&ns, IpAddr::V4(LO))?;
    let healthy = Microsocks::start_in(&ns, LO, free_port(&ns, LO))?;
    let refusing = SocketAddr::from((LO, free_port(&ns, LO)));
    let no_breaker = "health: { circuit_threshold: 100000, probe: { enabled: false } }\n";

    let at_once = Duration::ZERO;
    let direct = setup_times(&ns, healthy.addr(), target.addr(), connections, at_once)?;
    let direct_away = setup_times(&ns, healthy.addr(), target.addr(), connections, CLIENT_AWAY)?;

    let instance = unique("bh");
    let yaml = config(&instance, &[healthy.addr()], no_breaker);
    let daemon = Daemon::start_logging(&ns, &instance, &yaml, LOG_FILTER)?;
    let proxy = daemon.listener("socks");
    let through = setup_times(&ns, proxy, target.addr(), connections, at_once)?;
    let through_away = setup_times(&ns, proxy, target.addr(), connections, CLIENT_AWAY)?;
    drop(daemon);

    let instance = unique("bf");
    let yaml = config(&instance, &[refusing, healthy.addr()], no_breaker);
    let daemon = Daemon::start_logging(&ns, &instance, &yaml, LOG_FILTER)?;
    let mixed = setup_times(
        &ns,
        daemon.listener("socks"),
        target.addr(),
        connections,
        at_once,
    )?;
    // Sequential clients: the daemon's n-th "backend ready" is the n-th
    // client.
    let attempts = attempts(&daemon, mixed.len())?;
    let (mut first, mut failed_over) = (Vec::new(), Vec::new());
    for (time, attempts) in mixed.into_iter().zip(attempts) {
        match attempts {
            1 => first.push(time),
            2 => failed_over.push(time),
            other => bail!("a connection took {other} attempts with max_attempts 2"),
        }
    }
    ensure!(
        !first.is_empty() && !failed_over.is_empty(),
        "round robin did not alternate: {} direct, {} failed over",
        first.len(),
        failed_over.len()
    );
    Ok([
        direct,
        through,
        first,
        failed_over,
        direct_away,
        through_away,
    ])
}

/// Kills a backend under client load and brings it back; times the breaker.
fn breaker_run(threshold: u32, recovery: Duration) -> Result<(f64, f64)> {
    let ns = NetNs::new()?;
    let target = ChecksumTarget::start(&ns, IpAddr::V4(LO))?;
    let stable = Microsocks::start_in(&ns, LO, free_port(&ns, LO))?;
    let victim_port = free_port(&ns, LO);
    let victim = Microsocks::start_in(&ns, LO, victim_port)?;
    let victim_addr = victim.addr();
    let instance = unique("bb");
    let health = format!(
        "health: {{ circuit_threshold: {threshold}, recovery_interval: {}ms, \
         max_recovery_interval: {}ms, probe: {{ enabled: true, target: \"{}\", interval: 60s, timeout: 1s }} }}\n",
        recovery.as_millis(),
        recovery.as_millis(),
        target.addr()
    );
    let daemon = Daemon::start(
        &ns,
        &instance,
        &config(&instance, &[stable.addr(), victim_addr], &health),
    )?;
    let proxy = daemon.listener("socks");
    let target_addr = target.addr();
    let connect = || -> Result<()> {
        ns.run(move || socks_connect(proxy, &Target::Addr(target_addr), None).map(drop))
            .context("enter netns")?
            .map_err(|e| anyhow::anyhow!("client connection failed: {e:?}"))
    };
    // Warm up so the victim's breaker is closed before it dies.
    for _ in 0..4 {
        connect()?;
    }

    drop(victim);
    let died = Instant::now();
    while !daemon.breaker_changed(victim_addr, "open") {
        ensure!(died.elapsed() < BREAKER_WAIT, "breaker never opened");
        connect()?;
    }
    let death_to_open = died.elapsed();

    let closed_before = daemon.breaker_transitions(victim_addr, "closed");
    let _revived = Microsocks::start_in(&ns, LO, victim_port)?;
    let back = Instant::now();
    // Clients keep coming: once half-open, a client connection may be the
    // trial that closes the breaker, as a probe may.
    while daemon.breaker_transitions(victim_addr, "closed") == closed_before {
        ensure!(back.elapsed() < BREAKER_WAIT, "breaker never closed again");
        connect()?;
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((
        death_to_open.as_secs_f64() * 1e3,
        back.elapsed().as_secs_f64() * 1e3,
    ))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    require_root("network namespaces and BPF");
    let mut cases: [Vec<(f64, f64)>; 6] = Default::default();
    for run in 0..args.runs {
        eprintln!("bench_failover: latency run {}/{}", run + 1, args.runs);
        for (case, times) in cases.iter_mut().zip(latency_run(args.connections)?) {
            case.push((percentile(&times, 0.5), percentile(&times, 0.99)));
        }
    }
    let median = |v: Vec<f64>| percentile(&v, 0.5);
    let rows: Vec<Row> = CASES
        .iter()
        .zip(&cases)
        .map(|(&(case, baseline), runs)| Row {
            case,
            p50_us: median(runs.iter().map(|c| c.0).collect()),
            p99_us: median(runs.iter().map(|c| c.1).collect()),
            added_p50_us: median(
                runs.iter()
                    .zip(&cases[baseline])
                    .map(|(c, d)| c.0 - d.0)
                    .collect(),
            ),
            run_p50_us: runs.iter().map(|c| c.0).collect(),
        })
        .collect();

    let (threshold, recovery) = (3, Duration::from_millis(500));
    let mut breaker = Breaker {
        circuit_threshold: threshold,
        recovery_interval_ms: recovery.as_millis() as u64,
        death_to_open_ms: Vec::new(),
        recovery_to_closed_ms: Vec::new(),
    };
    for run in 0..args.runs {
        eprintln!("bench_failover: breaker run {}/{}", run + 1, args.runs);
        let (open, recovered) = breaker_run(threshold, recovery)?;
        breaker.death_to_open_ms.push(open);
        breaker.recovery_to_closed_ms.push(recovered);
    }

    println!(
        "Connection setup (connect + SOCKS5 CONNECT), {} sequential connections per case, \
         {} runs, loopback in a namespace; median over runs.\n",
        args.connections, args.runs
    );
    println!("| case | p50 µs (runs min-max) | p99 µs | added p50 vs its direct row µs |");
    println!("| --- | ---: | ---: | ---: |");
    for row in &rows {
        let (min, max) = row
            .run_p50_us
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        println!(
            "| {} | {:.0} ({min:.0}-{max:.0}) | {:.0} | {:.0} |",
            row.case, row.p50_us, row.p99_us, row.added_p50_us
        );
    }
    // Within one daemon and run, so both sides saw the same machine.
    let failover_added = median(
        cases[3]
            .iter()
            .zip(&cases[2])
            .map(|(refused, first)| refused.0 - first.0)
            .collect(),
    );
    println!(
        "\nFailover adds {failover_added:.0} µs (p50) to a connection whose first backend refuses."
    );
    println!(
        "Breaker (threshold {threshold}, recovery {} ms): death -> open median {:.0} ms; \
         recovery -> closed median {:.0} ms.",
        recovery.as_millis(),
        median(breaker.death_to_open_ms.clone()),
        median(breaker.recovery_to_closed_ms.clone()),
    );

    let report = Report {
        runs: args.runs,
        connections_per_case: args.connections,
        rows,
        breaker,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("could not write {path}"))?;
    }
    Ok(())
}
