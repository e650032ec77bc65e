//! `bench_compare`: issue 6's comparison. Builds a namespace topology of
//! [`balancer_tests::bench::topology`] (veth: four namespaces in a line;
//! loopback: one namespace, every hop over `lo`) once per run, starts the
//! target and the SOCKS5 backends, then measures every subject in turn with the same
//! client workloads (bulk 1 stream up / down and 8 streams down, 64 B
//! ping-pong, connection rate, CPU per GB; RSS with idle connections for
//! the balancer, once per engine), and reports medians over runs with
//! ratios to each row's backend and to `direct` of the same run. The
//! proxies run twice: in front of three microsocks (ratios to `backend`)
//! and in front of three dante-servers (ratios to `backend-dante`), since
//! microsocks copies in 1 KiB chunks, a small fraction of what dante moves
//! (0.36 against 2.6 GB/s one stream on veth). Each topology
//! (`--topology`, default both: veth, then loopback) is measured in full and
//! reported on its own, every ratio against its own rows.
//!
//! Usage: [`USAGE`] (`--help` prints it); through xtask,
//! `cargo xtask bench --only NAME -- ARGS`.
//!
//! Writes, per topology, the JSON, the Markdown (the tables, also printed)
//! and the chart: OUT.json, OUT.md, OUT.png for veth and OUT-loopback.json,
//! OUT-loopback.md, OUT-loopback.png for loopback.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};
use balancer_tests::{
    bench::{
        chart, cleanup,
        one_cpu::OneCpu,
        process, psock_trace,
        report::{self, Report, SubjectReport},
        stats::{self, Sample},
        subjects::{self, Backends, Engine, Subject, TARGET_PORT},
        target::{self, Target},
        topology::{self, Kind, Topology},
        workloads::{self, Client, Cost, Direction},
    },
    raise_nofile_limit, require_command, require_root,
};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct Settings {
    runs: usize,
    bulk_mib: u64,
    ping_pong_rounds: usize,
    ping_pong_warmup: usize,
    connections: usize,
    concurrency: usize,
    rss_connections: usize,
    topologies: Vec<&'static str>,
    subjects: Vec<&'static str>,
    /// Extra `forwarding:` keys for every balancer row (`--balancer-forwarding`).
    balancer_forwarding: String,
    /// RPS CPU mask for the receive queues in the balancer's namespace
    /// (`--lb-rps-cpus`; empty: the kernel's default, no steering).
    lb_rps_cpus: String,
    /// TCP congestion control in every namespace (`--congestion-control`).
    congestion_control: String,
}

const USAGE: &str = "bench_compare [--json OUT.json] [--topology veth|loopback|both] [--runs 5]
    [--quick] [--bulk-mib 192] [--rounds 20000] [--connections 10000] [--concurrency 16]
    [--rss-connections 10000] [--only SUBJECT,...]
    [--balancer-forwarding \"offload_after_bytes: 0\"] [--lb-rps-cpus 2]
    [--congestion-control cubic]

--only takes subject names (direct, backend, balancer-sockmap, haproxy, ...;
a wrong one lists them) and adds the baselines their ratios need.
--quick: 1 run, 64 MiB bulk, 2,000 rounds, 500 connections, 1,000 held.
--balancer-forwarding: YAML keys added to the balancer's `forwarding`.
--lb-rps-cpus: hex CPU mask for RPS on the balancer namespace's interfaces.
--congestion-control: TCP congestion control of every namespace of the run
  (default cubic, the kernel's default; the host's own default is not used).
With --json: writes OUT.json/.md/.png (veth) and OUT-loopback.json/.md/.png.";

#[derive(Debug)]
struct Args {
    json: Option<PathBuf>,
    settings: Settings,
    topologies: Vec<Kind>,
    subjects: Vec<Subject>,
}

fn parse_args() -> Result<Args> {
    let mut json = None;
    let mut settings = Settings {
        runs: 5,
        bulk_mib: 192,
        ping_pong_rounds: 20_000,
        ping_pong_warmup: 500,
        connections: 10_000,
        concurrency: 16,
        rss_connections: 10_000,
        topologies: Vec::new(),
        subjects: Vec::new(),
        balancer_forwarding: String::new(),
        lb_rps_cpus: String::new(),
        congestion_control: "cubic".to_owned(),
    };
    let mut topologies = Kind::ALL.to_vec();
    let mut subjects = Subject::ALL.to_vec();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--json" => json = Some(PathBuf::from(value()?)),
            "--topology" => topologies = topology::parse_selection(&value()?)?,
            "--runs" => settings.runs = value()?.parse().context("--runs")?,
            "--bulk-mib" => settings.bulk_mib = value()?.parse().context("--bulk-mib")?,
            "--rounds" => settings.ping_pong_rounds = value()?.parse().context("--rounds")?,
            "--connections" => settings.connections = value()?.parse().context("--connections")?,
            "--concurrency" => settings.concurrency = value()?.parse().context("--concurrency")?,
            "--balancer-forwarding" => settings.balancer_forwarding = value()?,
            "--lb-rps-cpus" => settings.lb_rps_cpus = value()?,
            "--congestion-control" => settings.congestion_control = value()?,
            "--rss-connections" => {
                settings.rss_connections = value()?.parse().context("--rss-connections")?;
            }
            "--quick" => {
                settings.runs = 1;
                settings.bulk_mib = 64;
                settings.ping_pong_rounds = 2000;
                settings.connections = 500;
                settings.rss_connections = 1000;
            }
            "--only" => {
                let names = value()?;
                let mut wanted = names
                    .split(',')
                    .map(|name| {
                        Subject::ALL
                            .into_iter()
                            .find(|s| s.name() == name)
                            .with_context(|| {
                                let known: Vec<_> = Subject::ALL.iter().map(|s| s.name()).collect();
                                format!("unknown subject {name:?}; known: {}", known.join(", "))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                // Ratios need the baselines of the same run.
                let baselines: Vec<Subject> = wanted.iter().map(|s| s.baseline()).collect();
                wanted.extend(baselines);
                wanted.extend([Subject::Backend, Subject::Direct]);
                subjects = Subject::ALL
                    .into_iter()
                    .filter(|s| wanted.contains(s))
                    .collect();
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    ensure!(settings.runs > 0, "--runs must be at least 1");
    ensure!(settings.bulk_mib >= 8, "--bulk-mib must be at least 8");
    ensure!(settings.concurrency > 0, "--concurrency must be at least 1");
    topology::check_congestion_control(&settings.congestion_control)?;
    settings.topologies = topologies.iter().map(|kind| kind.name()).collect();
    settings.subjects = subjects.iter().map(|s| s.name()).collect();
    Ok(Args {
        json,
        settings,
        topologies,
        subjects,
    })
}

/// A directory for configs and logs, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        cleanup::add_directory(&path);
        Ok(Self(path))
    }
}

impl TempDir {
    /// Leaves the directory in place; returns where it is.
    fn keep(mut self) -> PathBuf {
        cleanup::remove_directory(&self.0);
        std::mem::take(&mut self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
        cleanup::remove_directory(&self.0);
    }
}

/// The ping-pong again with every process of the run and the client on
/// one CPU ([`OneCpu`]), a proxy row taking turns with a connection through
/// its family's backend alone: what the path costs without wake-ups across
/// CPUs, and what the proxy adds to it in the same seconds.
fn ping_pong_on_one_cpu(
    subject: Subject,
    client: Client<'_>,
    access: subjects::Access,
    backends: &Backends,
    target: SocketAddr,
    settings: &Settings,
    sample: &mut Sample,
) -> Result<()> {
    let baseline = subject
        .proxied_family()
        .map(|family| subjects::Access::Socks5(backends.first_addr(family)));
    let rtts = {
        let _pinned = OneCpu::pin()?;
        workloads::ping_pong(
            client,
            (access, baseline),
            target,
            (settings.ping_pong_warmup, settings.ping_pong_rounds),
            || Ok(()),
        )
        .with_context(|| format!("{}: ping-pong on one CPU", subject.name()))?
    };
    let p50 = stats::percentile(&rtts.subject, 0.5);
    sample.insert(stats::RTT_ONE_CPU_P50, p50);
    if baseline.is_some() {
        sample.insert(
            stats::RTT_ONE_CPU_ADDED_P50,
            p50 - stats::percentile(&rtts.baseline, 0.5),
        );
    }
    Ok(())
}

/// Rounds of the traced ping-pong.
const TRACED_ROUNDS: usize = 5000;

/// A second ping-pong, traced with perf: how the sockmap engine hands each
/// redirected message to a kworker (see [`psock_trace`]). Its warm-up
/// outlasts the user-space copy's default time budget (100 ms) threefold,
/// so every traced round goes through the engine.
fn trace_psock_work(
    client: Client<'_>,
    access: subjects::Access,
    target: SocketAddr,
    rtt_p50_us: f64,
    dir: &Path,
    sample: &mut Sample,
) -> Result<()> {
    let warmup = (300_000.0 / rtt_p50_us.max(1.0)).ceil() as usize;
    let mut recording = psock_trace::Recording::start(client.ns, dir)?;
    workloads::ping_pong(
        client,
        (access, None),
        target,
        (warmup, TRACED_ROUNDS),
        || recording.enable(),
    )?;
    let work = recording.finish()?;
    ensure!(
        !work.wait_us.is_empty(),
        "perf saw no sk_psock_backlog work item: is the sockmap engine forwarding?"
    );
    sample.insert(
        stats::PSOCK_PER_RTT,
        work.queued as f64 / TRACED_ROUNDS as f64,
    );
    sample.insert(stats::PSOCK_WAIT_P50, stats::percentile(&work.wait_us, 0.5));
    sample.insert(
        stats::PSOCK_WAIT_P99,
        stats::percentile(&work.wait_us, 0.99),
    );
    sample.insert(stats::PSOCK_RUN_P50, stats::percentile(&work.run_us, 0.5));
    sample.insert(
        stats::PSOCK_SAME_CPU,
        work.same_cpu as f64 / work.wait_us.len() as f64,
    );
    Ok(())
}

/// The bulk phases: throughput key, direction, streams, bytes-per-skb key.
const BULK: [(&str, Direction, usize, &str); 3] = [
    (stats::BULK_UP_1, Direction::Up, 1, stats::SKB_UP_1),
    (stats::BULK_DOWN_1, Direction::Down, 1, stats::SKB_DOWN_1),
    (stats::BULK_DOWN_8, Direction::Down, 8, stats::SKB_DOWN_8),
];

/// Measures one subject once; the returned sample holds every metric.
fn measure(
    subject: Subject,
    topology: &Topology,
    backends: &mut Backends,
    balancer: &Path,
    dir: &Path,
    run: usize,
    settings: &Settings,
) -> Result<Sample> {
    let mut running = subjects::start(
        subject,
        topology,
        backends,
        (balancer, &settings.balancer_forwarding),
        dir,
        run,
    )?;
    let access = running.access;
    let target = SocketAddr::from((topology.target_addr(), TARGET_PORT));
    let client = Client {
        ns: topology.client(),
        source: topology.client_source(),
    };
    let mut sample = Sample::new();

    let bytes = settings.bulk_mib << 20;
    let mut total = Cost::default();
    let mut moved = 0u64;
    // Connections the client opens to the target, for the REDIRECT check.
    let mut opened = 0u64;
    let mut redirected = running.sockmap_share(balancer)?;
    for (key, direction, streams, skb_key) in BULK {
        opened += streams as u64;
        let cost = workloads::bulk(
            client,
            access,
            target,
            direction,
            streams,
            bytes,
            running.daemon_pid,
        )
        .with_context(|| format!("{}: {key}", subject.name()))?;
        let exact = bytes / streams as u64 * streams as u64;
        sample.insert(key, exact as f64 / cost.seconds / 1e9);
        if let Some(before) = redirected {
            let after = running
                .sockmap_share(balancer)?
                .context("the daemon's skb counters went away")?;
            let (kernel_bytes, skbs) = match direction {
                Direction::Up => (after.up - before.up, after.up_skbs - before.up_skbs),
                Direction::Down => (after.down - before.down, after.down_skbs - before.down_skbs),
            };
            // A sockmap row whose bulk phase the kernel did not carry
            // measured user space, not the engine.
            ensure!(
                skbs > 0,
                "{}: {key}: the sockmap verdict redirected no skb (user space carried the phase)",
                subject.name()
            );
            sample.insert(skb_key, kernel_bytes as f64 / skbs as f64);
            redirected = Some(after);
        }
        moved += exact;
        total.system += cost.system;
        total.daemon += cost.daemon;
    }
    let gb = moved as f64 / 1e9;
    sample.insert(stats::CPU_USER, total.system.user / gb);
    sample.insert(stats::CPU_SYSTEM, total.system.system / gb);
    sample.insert(stats::CPU_SOFTIRQ, total.system.softirq / gb);
    sample.insert(stats::CPU_TOTAL, total.system.total() / gb);
    sample.insert(stats::BULK_BUSY, total.system.busy_share());
    if running.daemon_pid.is_some() {
        sample.insert(stats::DAEMON_USER, total.daemon.user / gb);
        sample.insert(stats::DAEMON_SYSTEM, total.daemon.system / gb);
    }

    let rtts = workloads::ping_pong(
        client,
        (access, None),
        target,
        (settings.ping_pong_warmup, settings.ping_pong_rounds),
        || Ok(()),
    )
    .with_context(|| format!("{}: ping-pong", subject.name()))?;
    opened += 1;
    let rtt_p50 = stats::percentile(&rtts.subject, 0.5);
    sample.insert(stats::RTT_P50, rtt_p50);
    sample.insert(stats::RTT_P99, stats::percentile(&rtts.subject, 0.99));
    sample.insert(stats::RTT_P999, stats::percentile(&rtts.subject, 0.999));
    ping_pong_on_one_cpu(
        subject,
        client,
        access,
        backends,
        target,
        settings,
        &mut sample,
    )?;
    opened += 1;
    if subject.engine() == Some(Engine::Sockmap) {
        trace_psock_work(client, access, target, rtt_p50, dir, &mut sample)
            .with_context(|| format!("{}: traced ping-pong", subject.name()))?;
        opened += 1;
    }

    let rate = workloads::connection_rate(
        client,
        access,
        target,
        settings.concurrency,
        settings.connections,
        running.daemon_pid,
    )
    .with_context(|| format!("{}: connection rate", subject.name()))?;
    opened += rate.setup_us.len() as u64;
    sample.insert(stats::CONN_RATE, rate.per_second);
    let per_connection = 1e6 / rate.setup_us.len() as f64;
    if running.daemon_pid.is_some() {
        sample.insert(
            stats::CONN_DAEMON_CPU,
            (rate.daemon.user + rate.daemon.system) * per_connection,
        );
        sample.insert(stats::CONN_DAEMON_USER, rate.daemon.user * per_connection);
    }
    sample.insert(stats::CONN_CPU_TOTAL, rate.system.total() * per_connection);
    sample.insert(stats::CONN_BUSY, rate.system.busy_share());
    sample.insert(
        stats::CONN_SETUP_P99,
        stats::percentile(&rate.setup_us, 0.99),
    );

    if let (Some(engine), Some(pid)) = (subject.rss_engine(), running.daemon_pid) {
        // The daemon cannot raise its own RLIMIT_NOFILE past the hard limit
        // (no CAP_SYS_RESOURCE here): hold as many as its descriptors allow
        // and extrapolate linearly to 10,000.
        let budget = process::nofile_hard_limit().saturating_sub(1000);
        let count = settings
            .rss_connections
            .min(usize::try_from(budget / engine.fds_per_connection()).unwrap_or(usize::MAX));
        let rss = workloads::rss_with_idle_connections(client, access, target, count, pid)
            .with_context(|| format!("{}: {count} idle connections", subject.name()))?;
        opened += count as u64;
        sample.insert(stats::RSS_IDLE, rss.idle_mib);
        sample.insert(stats::RSS_CONNECTIONS, count as f64);
        sample.insert(stats::RSS_LOADED, rss.loaded_mib);
        sample.insert(
            stats::RSS_10K,
            rss.idle_mib + (rss.loaded_mib - rss.idle_mib) * 10_000.0 / count.max(1) as f64,
        );
    }
    if let Some(redirected) = running.redirected()? {
        ensure!(
            redirected == opened,
            "{}: the REDIRECT rule diverted {redirected} connections, the client opened \
             {opened}: it missed some, or caught connections not the client's",
            subject.name()
        );
        eprintln!(
            "bench_compare: {}: REDIRECT diverted all {opened} client connections, no other",
            subject.name()
        );
    }
    running
        .ensure_running()
        .with_context(|| format!("{} died during the run", subject.name()))?;
    drop(running);
    backends
        .ensure_running()
        .with_context(|| format!("a backend died while measuring {}", subject.name()))?;
    Ok(sample)
}

fn main() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some(target::SERVE_FLAG) {
        let addr = argv.next().context("--serve-target needs IP:PORT")?;
        return target::serve_forever(addr.parse().context("--serve-target IP:PORT")?);
    }
    cleanup::install().context("install signal handling")?;
    let args = parse_args()?;
    require_root("network namespaces, iptables and BPF");
    for (program, package) in [
        ("microsocks", "microsocks"),
        ("danted", "dante-server"),
        ("haproxy", "haproxy"),
        ("redsocks", "redsocks"),
        ("iptables", "iptables"),
        ("gnuplot", "gnuplot-nox"),
        ("nsenter", "util-linux"),
        ("perf", "linux-perf"),
    ] {
        require_command(program, package);
    }
    let settings = &args.settings;
    raise_nofile_limit(process::nofile_hard_limit())
        .context("raise RLIMIT_NOFILE for the client")?;
    let balancer = balancer_tests::daemon::balancer_binary()?;
    let dir = TempDir::create(
        std::env::temp_dir().join(format!("bench-compare-{}", std::process::id())),
    )?;
    let began = Instant::now();
    for &kind in &args.topologies {
        let report = match measure_topology(kind, &args, &balancer, &dir.0, began) {
            Ok(report) => report,
            Err(error) => {
                // The processes' logs say what went wrong: keep them.
                eprintln!(
                    "bench_compare: the configs and logs of this run are kept in {}",
                    dir.keep().display()
                );
                return Err(error);
            }
        };
        // Written before the next topology starts, so a failure there
        // keeps this one's results.
        let markdown = report::markdown(&report);
        println!("{markdown}");
        if let Some(json) = &args.json {
            let json = report::path_for(json, kind);
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("write {}", json.display()))?;
            let md = json.with_extension("md");
            std::fs::write(&md, &markdown).with_context(|| format!("write {}", md.display()))?;
            chart::draw(
                &report.subjects,
                kind.name(),
                settings.runs,
                &json.with_extension("png"),
            )?;
            eprintln!(
                "bench_compare: {kind}: wrote {} (.md, .png)",
                json.display()
            );
        }
    }
    eprintln!(
        "bench_compare: {:.0} s in total",
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every run of every subject on a fresh topology of `kind`, reported with
/// ratios against that topology's own rows.
fn measure_topology(
    kind: Kind,
    args: &Args,
    balancer: &Path,
    dir: &Path,
    began: Instant,
) -> Result<Report> {
    let settings = &args.settings;
    // samples[subject][run]
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); args.subjects.len()];
    for run in 0..settings.runs {
        let topology = Topology::new(kind)?;
        topology.use_congestion_control(&settings.congestion_control)?;
        if !settings.lb_rps_cpus.is_empty() {
            topology.steer_lb_receive(&settings.lb_rps_cpus)?;
        }
        let _target = Target::start(topology.target(), topology.target_addr(), TARGET_PORT, dir)?;
        let mut backends = Backends::start(&topology, dir)?;
        for (i, subject) in args.subjects.iter().enumerate() {
            eprintln!(
                "bench_compare: {kind}: run {}/{}: {} ({:.0} s)",
                run + 1,
                settings.runs,
                subject.name(),
                began.elapsed().as_secs_f64()
            );
            let sample = measure(
                *subject,
                &topology,
                &mut backends,
                balancer,
                dir,
                run,
                settings,
            )
            .with_context(|| format!("{kind} topology"))?;
            samples[i].push(sample);
        }
    }

    let runs_of = |wanted: Subject| {
        args.subjects
            .iter()
            .position(|s| *s == wanted)
            .map(|i| samples[i].clone())
            .unwrap_or_default()
    };
    let direct = runs_of(Subject::Direct);
    let subject_reports: Vec<SubjectReport> = args
        .subjects
        .iter()
        .zip(&samples)
        .map(|(subject, runs)| SubjectReport {
            name: subject.name(),
            path: subject.describe(),
            group: subject.group(),
            baseline: subject.baseline().name(),
            figures: stats::figures(runs, &runs_of(subject.baseline()), &direct),
        })
        .collect();
    let targets = report::targets(&subject_reports);
    Ok(Report {
        runs: settings.runs,
        settings: serde_json::to_value(settings)?,
        network: kind.name(),
        topology: kind.describe(),
        subjects: subject_reports,
        targets,
    })
}
