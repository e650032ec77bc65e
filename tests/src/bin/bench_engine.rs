//! `bench_engine`: one TCP stream of N bytes over loopback, client -> server,
//! without a proxy and through each forwarding engine, for a sweep of socket
//! buffer sizes. It runs in a network namespace of its own whose TCP
//! congestion control it sets (`cubic` unless told), so that neither the
//! host's default nor its other traffic takes part; SIGINT, SIGTERM and
//! SIGHUP delete the namespace before the process exits. Every run verifies
//! the SHA-256 of what arrived; throughput is compared with the no-proxy run
//! of the same round, and CPU is counted system-wide from `/proc/stat`
//! (user+nice+system+irq+softirq, all CPUs), so kernel workers and softirq
//! count too.
//!
//! Usage: [`USAGE`] (`--help` prints it); through xtask,
//! `cargo xtask bench --only NAME -- ARGS`.
//!
//! Prints a Markdown table to stdout and writes the JSON to OUT.

use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use balancer::forward::{BackendSlot, Engine, EngineKind, ForwardOptions, PairEnd};
use balancer_tests::{
    RandomSource, Topology, TopologyKind,
    bench::{
        cleanup,
        topology::{self, Ns},
    },
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "bench_engine [--json OUT] [--runs 5] [--mib 1024] [--engines splice,sockmap]
    [--buffers default,4,16] [--congestion-control cubic]

--buffers: socket buffer sizes in MiB, `default` for the kernel's autotuning.
--congestion-control: TCP congestion control of the benchmark's namespace
  (default cubic, the kernel's default; the host's own default is not used).";

#[derive(Debug)]
struct Args {
    json: Option<String>,
    runs: usize,
    bytes: usize,
    engines: Vec<EngineKind>,
    /// `None` keeps kernel autotuning.
    buffers: Vec<Option<usize>>,
    congestion_control: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        json: None,
        runs: 5,
        bytes: 1 << 30,
        engines: vec![EngineKind::Sockmap, EngineKind::Splice],
        buffers: vec![None, Some(4 << 20), Some(16 << 20)],
        congestion_control: "cubic".to_owned(),
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
            "--mib" => args.bytes = value()?.parse::<usize>().context("--mib")? << 20,
            "--engines" => {
                args.engines = value()?
                    .split(',')
                    .map(|name| match name {
                        "sockmap" => Ok(EngineKind::Sockmap),
                        "splice" => Ok(EngineKind::Splice),
                        other => bail!("unknown engine {other:?} (sockmap, splice)"),
                    })
                    .collect::<Result<_>>()?;
            }
            "--buffers" => {
                args.buffers = value()?
                    .split(',')
                    .map(|size| match size {
                        "default" => Ok(None),
                        mib => Ok(Some(mib.parse::<usize>().context("--buffers: MiB")? << 20)),
                    })
                    .collect::<Result<_>>()?;
            }
            "--congestion-control" => args.congestion_control = value()?,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    ensure!(args.runs > 0, "--runs must be at least 1");
    topology::check_congestion_control(&args.congestion_control)?;
    Ok(args)
}

/// System-wide busy CPU time from the first line of `/proc/stat`.
fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parse /proc/stat")?;
    ensure!(fields.len() >= 7, "short /proc/stat cpu line");
    // user nice system idle iowait irq softirq
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(busy as f64 / hz as f64)
}

/// The payload (generated once) and its digest.
struct Payload {
    bytes: Vec<u8>,
    sha256: [u8; 32],
}

fn payload(len: usize) -> Payload {
    let mut random = RandomSource::new(len as u64, 42);
    let mut bytes = Vec::with_capacity(len);
    loop {
        let chunk = random.next_chunk(1 << 20);
        if chunk.is_empty() {
            break;
        }
        bytes.extend_from_slice(chunk);
    }
    Payload {
        bytes,
        sha256: random.digest().sha256,
    }
}

/// One transfer's result.
#[derive(Clone, Copy, Debug, Serialize)]
struct Run {
    gbytes_per_s: f64,
    cpu_s_per_gb: f64,
    ratio_to_no_proxy: f64,
}

/// Sends the payload `client -> server` with blocking sockets on two
/// threads; the receiver reads into a pre-faulted buffer and hashes after
/// the clock stopped, so hashing costs neither time nor CPU in the result.
fn transfer(
    client: TcpStream,
    mut server: TcpStream,
    payload: &Payload,
    sink: &mut [u8],
) -> Result<Run> {
    let cpu_before = busy_cpu_seconds()?;
    let start = Instant::now();
    let received = thread::scope(|scope| -> Result<usize> {
        let sender = scope.spawn(move || -> Result<()> {
            let mut client = client;
            for chunk in payload.bytes.chunks(1 << 20) {
                client.write_all(chunk).context("send")?;
            }
            client.shutdown(std::net::Shutdown::Write).context("fin")?;
            // Keep the socket open until the receiver is done: closing with
            // unread data would reset the stream.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).context("wait for close")?;
            Ok(())
        });
        let mut filled = 0;
        loop {
            let n = if filled == sink.len() {
                // Full: the next read must be EOF, anything else is extra.
                let extra = server.read(&mut [0; 1]).context("receive")?;
                ensure!(extra == 0, "more bytes arrived than were sent");
                0
            } else {
                server.read(&mut sink[filled..]).context("receive")?
            };
            if n == 0 {
                break;
            }
            filled += n;
        }
        drop(server);
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        Ok(filled)
    })?;
    let elapsed = start.elapsed();
    let cpu = busy_cpu_seconds()? - cpu_before;
    ensure!(
        received == payload.bytes.len(),
        "received {received} of {} bytes",
        payload.bytes.len()
    );
    let digest: [u8; 32] = Sha256::digest(&sink[..received]).into();
    ensure!(
        digest == payload.sha256,
        "SHA-256 of the received stream differs"
    );
    let gb = received as f64 / 1e9;
    Ok(Run {
        gbytes_per_s: gb / elapsed.as_secs_f64(),
        cpu_s_per_gb: cpu / gb,
        ratio_to_no_proxy: 1.0,
    })
}

fn blocking(stream: tokio::net::TcpStream) -> Result<TcpStream> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

async fn no_proxy(topology: &Topology, payload: &Payload, sink: &mut [u8]) -> Result<Run> {
    let sockets = topology.pair_sockets().await?;
    // The client's own connection to the "proxy" listener's accepted socket
    // is a direct client -> server stream.
    let client = blocking(sockets.client)?;
    let server = blocking(sockets.accepted)?;
    tokio::task::block_in_place(|| transfer(client, server, payload, sink))
}

async fn proxied(
    kind: EngineKind,
    buffer: Option<usize>,
    topology: &Topology,
    payload: &Payload,
    sink: &mut [u8],
) -> Result<Run> {
    let options = ForwardOptions {
        socket_buffer: buffer,
        ..ForwardOptions::default()
    };
    let engine = Engine::open(kind, options).await?;
    let sockets = topology.pair_sockets().await?;
    let (pair, client, server) = sockets.into_pair(BackendSlot(0));
    let cancel = CancellationToken::new();
    let forward = tokio::spawn(async move { engine.forward(pair, &cancel).await });
    let (client, server) = (blocking(client)?, blocking(server)?);
    let run = tokio::task::block_in_place(|| transfer(client, server, payload, sink));
    let summary = tokio::time::timeout(Duration::from_secs(10), forward)
        .await
        .context("pair did not end")??
        // The engine's own error explains a failed transfer better.
        .context("engine forward")?;
    let run = run?;
    ensure!(
        summary.end == PairEnd::Closed,
        "pair ended {:?}",
        summary.end
    );
    ensure!(
        summary.bytes.up == payload.bytes.len() as u64,
        "engine counted {} bytes",
        summary.bytes.up
    );
    Ok(run)
}

#[derive(Debug, Serialize)]
struct Row {
    engine: String,
    socket_buffer: String,
    runs: Vec<Run>,
    median_gbytes_per_s: f64,
    min_gbytes_per_s: f64,
    max_gbytes_per_s: f64,
    median_ratio_to_no_proxy: f64,
    median_cpu_s_per_gb: f64,
    error: Option<String>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn row(engine: &str, buffer: Option<usize>, runs: Vec<Run>, error: Option<String>) -> Row {
    let of = |f: fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    Row {
        engine: engine.to_owned(),
        socket_buffer: buffer.map_or("default".to_owned(), |b| format!("{} MiB", b >> 20)),
        median_gbytes_per_s: median(of(|r| r.gbytes_per_s)),
        min_gbytes_per_s: of(|r| r.gbytes_per_s).into_iter().fold(f64::NAN, f64::min),
        max_gbytes_per_s: of(|r| r.gbytes_per_s).into_iter().fold(f64::NAN, f64::max),
        median_ratio_to_no_proxy: median(of(|r| r.ratio_to_no_proxy)),
        median_cpu_s_per_gb: median(of(|r| r.cpu_s_per_gb)),
        runs,
        error,
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bytes_per_run: usize,
    runs: usize,
    cpus: usize,
    congestion_control: String,
    rows: Vec<Row>,
}

fn main() -> Result<()> {
    // First, before any thread exists: every thread inherits the signal mask.
    cleanup::install().context("install signal handling")?;
    let args = parse_args()?;
    balancer_tests::require_root("its network namespace and the sockmap engine");
    // Deleted on drop, also when the benchmark fails, and by the signal
    // thread on Ctrl-C. The runtime's threads are spawned from the thread
    // that entered it, so every socket of the benchmark lives there.
    let ns = Ns::new()?;
    ns.use_congestion_control(&args.congestion_control)?;
    ns.ns().run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?
            .block_on(bench(args))
    })?
}

async fn bench(args: Args) -> Result<()> {
    let payload = payload(args.bytes);
    // Pre-fault the receive buffer so page faults are not measured.
    let mut sink = vec![1u8; args.bytes];
    let topology = Topology::new(TopologyKind::Loopback)?;
    let configs: Vec<(EngineKind, Option<usize>)> = args
        .engines
        .iter()
        .flat_map(|&kind| args.buffers.iter().map(move |&buffer| (kind, buffer)))
        .collect();
    let mut baseline = Vec::new();
    let mut results: Vec<(Vec<Run>, Option<String>)> =
        configs.iter().map(|_| (Vec::new(), None)).collect();
    for round in 0..args.runs {
        let base = no_proxy(&topology, &payload, &mut sink).await?;
        eprintln!("round {round}: no proxy {:.2} GB/s", base.gbytes_per_s);
        baseline.push(base);
        for ((kind, buffer), (runs, error)) in configs.iter().zip(results.iter_mut()) {
            if error.is_some() {
                continue;
            }
            match proxied(*kind, *buffer, &topology, &payload, &mut sink).await {
                Ok(mut run) => {
                    run.ratio_to_no_proxy = run.gbytes_per_s / base.gbytes_per_s;
                    eprintln!(
                        "round {round}: {kind:?} {buffer:?} {:.2} GB/s",
                        run.gbytes_per_s
                    );
                    runs.push(run);
                }
                Err(cause) => {
                    eprintln!("{kind:?} {buffer:?}: {cause:#}");
                    *error = Some(format!("{cause:#}"));
                }
            }
        }
    }
    let mut rows = vec![row("no proxy", None, baseline, None)];
    for ((kind, buffer), (runs, error)) in configs.into_iter().zip(results) {
        let name = match kind {
            EngineKind::Sockmap => "sockmap",
            EngineKind::Splice => "splice",
            EngineKind::Auto => "auto",
        };
        rows.push(row(name, buffer, runs, error));
    }
    let report = Report {
        bytes_per_run: args.bytes,
        runs: args.runs,
        cpus: thread::available_parallelism().map_or(0, usize::from),
        congestion_control: args.congestion_control,
        rows,
    };
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {path}"))?;
    }
    Ok(())
}

fn print_table(report: &Report) {
    println!(
        "One TCP stream, {} MiB per run, {} runs, loopback in a namespace of its own, \
         congestion control {}, {} CPUs; median (min-max).\n",
        report.bytes_per_run >> 20,
        report.runs,
        report.congestion_control,
        report.cpus
    );
    println!(
        "| engine | socket buffer | GB/s median (min-max) | ratio to no proxy | CPU s/GB (system-wide) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for row in &report.rows {
        match &row.error {
            Some(error) => println!(
                "| {} | {} | unavailable: {error} | | |",
                row.engine, row.socket_buffer
            ),
            None => println!(
                "| {} | {} | {:.2} ({:.2}-{:.2}) | {:.2} | {:.2} |",
                row.engine,
                row.socket_buffer,
                row.median_gbytes_per_s,
                row.min_gbytes_per_s,
                row.max_gbytes_per_s,
                row.median_ratio_to_no_proxy,
                row.median_cpu_s_per_gb
            ),
        }
    }
}
