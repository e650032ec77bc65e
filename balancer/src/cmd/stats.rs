//! `balancer stats`: reads a running instance's counters and prints them as
//! a table, or as JSON, once or every few seconds until Ctrl-C. Under
//! sockmap it reads the pinned BPF maps directly (see
//! [`crate::stats::pinned`]); an instance without pins (splice), or pins
//! this user may not open, is read from its status file (see
//! [`crate::stats::status_file`]). `--json` names the source it read.

use std::{
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::Context as _;
use comfy_table::{CellAlignment, Table, presets};

use crate::{
    bpf::PinnedStats,
    cli::StatsArgs,
    clock,
    cmd::UsageError,
    config::{self, Config},
    forward::{BackendEngine, sockmap::QUEUE_WARN_ABOVE},
    stats::{
        pinned::{self, PinnedError},
        snapshot::{Rate, Snapshot, rates},
        status_file,
    },
};

/// Where a snapshot came from (`source` in `--json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The pinned BPF maps and the identity file.
    Maps,
    /// The status file the daemon rewrites every second.
    StatusFile,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Self::Maps => "bpf_maps",
            Self::StatusFile => "status_file",
        }
    }
}

/// Reads the instance: its pins when there are some, else the status file.
/// Pins this user may not open fall back to the status file; when that
/// fails too, the error names the missing privilege.
fn read(instance: &str) -> anyhow::Result<(Snapshot, Source)> {
    let dir = config::run_dir(instance);
    let pin_dir = Config {
        instance: instance.to_owned(),
        ..Config::default()
    }
    .pin_dir();
    let pins = match PinnedStats::exist(&pin_dir) {
        Ok(false) => None,
        Ok(true) => Some(pinned::read(instance, &pin_dir, &dir, clock::wall_now())),
        Err(error) => Some(Err(PinnedError::Bpf(error))),
    };
    match pins {
        Some(Ok(snapshot)) => Ok((snapshot, Source::Maps)),
        None => Ok((
            status_file::read_live(instance, &dir, clock::wall_now())?,
            Source::StatusFile,
        )),
        Some(Err(PinnedError::Bpf(error))) if error.is_permission() => {
            status_file::read_live(instance, &dir, clock::wall_now())
                .map(|snapshot| (snapshot, Source::StatusFile))
                .map_err(|_| error.into())
        }
        // Pins without an identity file: starting, or shutting down (the
        // files go first); the status file says which plainly.
        Some(Err(PinnedError::NoIdentity { .. })) => Ok((
            status_file::read_live(instance, &dir, clock::wall_now())?,
            Source::StatusFile,
        )),
        Some(Err(error)) => Err(error.into()),
    }
}

/// The snapshot as JSON with the `source` it was read from.
fn json(snapshot: &Snapshot, source: Source, pretty: bool) -> anyhow::Result<String> {
    let mut value = serde_json::to_value(snapshot).context("cannot encode the status")?;
    if let Some(object) = value.as_object_mut() {
        object.insert("source".to_owned(), source.label().into());
    }
    let mut text = if pretty {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    }
    .context("cannot encode the status")?;
    text.push('\n');
    Ok(text)
}

/// Clears the terminal and moves the cursor home, for `--watch`.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// # Errors
/// [`UsageError`] for a bad instance name and the config's error for a bad
/// file (exit 2); a [`status_file::StatusError`] when the instance is not
/// running or its file is unreadable (exit 1).
pub fn run(args: &StatsArgs) -> anyhow::Result<()> {
    let instance = instance(args)?;
    let Some(secs) = args.watch else {
        let (snapshot, source) = read(&instance)?;
        let text = if args.json {
            json(&snapshot, source, true)?
        } else {
            render(&snapshot, None)
        };
        return print(&text);
    };
    let clear = !args.json && std::io::stdout().is_terminal();
    let mut previous: Option<Snapshot> = None;
    loop {
        let (snapshot, source) = read(&instance)?;
        let text = if args.json {
            // One document per line, one line per sample.
            json(&snapshot, source, false)?
        } else {
            let rates = previous.as_ref().map(|before| rates(before, &snapshot));
            let mut text = render(&snapshot, Some(rates.as_deref().unwrap_or(&[])));
            let _ = writeln!(text, "every {secs} s; Ctrl-C stops");
            text
        };
        print(&if clear {
            format!("{CLEAR_SCREEN}{text}")
        } else {
            text
        })?;
        previous = Some(snapshot);
        std::thread::sleep(Duration::from_secs(secs));
    }
}

/// `--instance`, else the config file's `instance`, else `default`.
fn instance(args: &StatsArgs) -> anyhow::Result<String> {
    if let Some(name) = &args.instance {
        if !config::is_valid_instance(name) {
            return Err(UsageError::BadInstance(name.clone()).into());
        }
        return Ok(name.clone());
    }
    match &args.config {
        Some(path) => Ok(Config::load(path)?.instance),
        None => Ok(Config::default().instance),
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// The table `stats` prints: a summary line, then one row per backend.
/// `rates` (in `--watch` mode; empty for the first sample) adds throughput
/// columns, `-` where unknown.
#[must_use]
pub fn render(snapshot: &Snapshot, rates: Option<&[Option<Rate>]>) -> String {
    let mut out = String::new();
    let handshake_failures: u64 = snapshot.counters.handshake_failures.values().sum();
    let _ = writeln!(
        out,
        "instance {} · pid {} · engine {} · up {} · accepted {} · retries {} · exhausted {} · \
         client handshake failures {}",
        snapshot.instance,
        snapshot.pid,
        snapshot.engine,
        uptime(snapshot.uptime_secs),
        snapshot.counters.accepted,
        snapshot.counters.retries,
        snapshot.counters.exhausted,
        handshake_failures,
    );
    let queue = snapshot.counters.kernel_queue;
    if queue.checks > 0 {
        // Only sockmap looks at the kernel's queue; under splice it is empty.
        let _ = writeln!(
            out,
            "kernel queue towards slow receivers: largest {} · directions over {} {} · \
             connections reset at forwarding.kernel_queue_limit {}",
            bytes(queue.largest_bytes as f64),
            bytes(QUEUE_WARN_ABOVE as f64),
            queue.warnings,
            queue.resets,
        );
    }
    let mut header = vec![
        "BACKEND",
        "ADDRESS",
        "STATE",
        "ACTIVE",
        "TOTAL",
        "SUCCESS",
        "FAILURES",
        "PROBES ok/fail",
        "LATENCY ms",
        "BYTES UP",
        "BYTES DOWN",
    ];
    // Only the sockmap engine counts skbs.
    let skbs = snapshot.backends.iter().any(|b| b.sockmap.is_some());
    if skbs {
        header.push("PER SKB up/down");
    }
    if rates.is_some() {
        header.extend(["UP/s", "DOWN/s"]);
    }
    let mut table = Table::new();
    table.load_style(presets::UTF8_FULL_CONDENSED);
    table.set_header(header.clone());
    for (index, backend) in snapshot.backends.iter().enumerate() {
        let state = if backend.draining {
            format!("{} (draining)", backend.state)
        } else if backend.disabled {
            format!("{} ({})", backend.state, backend.admin)
        } else {
            backend.state.clone()
        };
        let mut row = vec![
            backend.name.clone(),
            backend.address.clone(),
            state,
            backend.active.to_string(),
            backend.attempts.to_string(),
            backend
                .success_rate
                .map_or_else(|| "-".to_owned(), |rate| format!("{:.1}%", rate * 100.0)),
            backend.failures_total().to_string(),
            format!("{}/{}", backend.probes_ok, backend.probes_failed),
            backend
                .latency_ema_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
            bytes(backend.bytes_up as f64),
            bytes(backend.bytes_down as f64),
        ];
        if skbs {
            let mean = |per_skb: Option<f64>| per_skb.map_or_else(|| "-".to_owned(), bytes);
            row.push(match (backend.engine, backend.sockmap) {
                // Its pairs never pass the verdict: say why the column is empty.
                (BackendEngine::Splice, _) => "(engine: splice)".to_owned(),
                (BackendEngine::Auto, None) => "-".to_owned(),
                (BackendEngine::Auto, Some(share)) => format!(
                    "{}/{}",
                    mean(share.bytes_per_skb_up()),
                    mean(share.bytes_per_skb_down())
                ),
            });
        }
        if let Some(rates) = rates {
            let rate = rates.get(index).copied().flatten();
            row.push(rate.map_or_else(|| "-".to_owned(), |r| format!("{}/s", bytes(r.up))));
            row.push(rate.map_or_else(|| "-".to_owned(), |r| format!("{}/s", bytes(r.down))));
        }
        table.add_row(row);
    }
    for index in 3..header.len() {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    if snapshot.backends.is_empty() {
        out.push_str("no backends\n");
    } else {
        let _ = writeln!(out, "{table}");
    }
    for backend in snapshot.backends.iter().filter(|b| b.splice_advised) {
        let per_skb = backend
            .sockmap
            .and_then(|share| share.bytes_per_skb_down())
            .map_or_else(|| "-".to_owned(), bytes);
        let _ = writeln!(
            out,
            "advice: {}'s downloads come in {per_skb} skbs on average; sockmap pays per skb, \
             splice moves more behind such a backend: consider `engine: splice` on its entry",
            backend.name
        );
    }
    out
}

/// `1.5 MiB`: binary units, one decimal from KiB on.
fn bytes(count: f64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if count < 1024.0 {
        return format!("{count:.0} B");
    }
    let mut value = count / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// `3d04h`, `2h05m`, `4m09s`, `12s`.
fn uptime(secs: f64) -> String {
    let secs = secs.max(0.0) as u64;
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::snapshot::{
        BackendSnapshot, DaemonCounters, FORMAT_VERSION, KernelQueue, SockmapShare,
    };

    fn backend(name: &str, success_rate: Option<f64>) -> BackendSnapshot {
        BackendSnapshot {
            name: name.to_owned(),
            address: "10.0.0.1:1080".to_owned(),
            scope: None,
            state: "closed".to_owned(),
            draining: false,
            disabled: false,
            admin: "enabled".to_owned(),
            active: 2,
            attempts: 10,
            successes: 9,
            failures: [("connect_refused".to_owned(), 1)].into(),
            retries: 0,
            probes_ok: 4,
            probes_failed: 1,
            success_rate,
            latency_ema_ms: None,
            bytes_up: 1536,
            bytes_down: 3 << 20,
            sockmap: None,
            engine: BackendEngine::Auto,
            splice_advised: false,
            last_success_unix_ms: None,
            last_failure_unix_ms: None,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            instance: "edge".to_owned(),
            pid: 7,
            engine: "sockmap".to_owned(),
            started_unix_ms: 0,
            written_unix_ms: 1_000,
            uptime_secs: 125.0,
            counters: DaemonCounters::default(),
            backends: vec![backend("alpha", Some(0.9)), backend("beta", None)],
        }
    }

    #[test]
    fn the_table_has_one_row_per_backend_and_a_dash_for_an_unknown_rate() {
        let text = render(&snapshot(), None);
        assert!(
            text.starts_with("instance edge · pid 7 · engine sockmap · up 2m05s"),
            "{text}"
        );
        let alpha = text
            .lines()
            .find(|l| l.contains("alpha"))
            .expect("alpha row");
        assert!(alpha.contains("90.0%"), "{alpha}");
        assert!(alpha.contains("1.5 KiB"), "{alpha}");
        assert!(alpha.contains("3.0 MiB"), "{alpha}");
        assert!(alpha.contains("4/1"), "probes: {alpha}");
        let beta = text.lines().find(|l| l.contains("beta")).expect("beta row");
        assert!(
            !beta.contains('%'),
            "unknown rate shown as a number: {beta}"
        );
        assert!(beta.contains(" - "), "{beta}");
        assert!(!text.contains("UP/s"), "no throughput outside --watch");
    }

    #[test]
    fn the_bytes_per_skb_column_shows_under_sockmap_with_a_dash_before_the_first_skb() {
        assert!(!render(&snapshot(), None).contains("PER SKB"), "splice");
        let mut counted = snapshot();
        counted.backends[0].sockmap = Some(SockmapShare {
            bytes_up: 1_000,
            bytes_down: 3 << 20,
            skbs_up: 4,
            skbs_down: 3 * 1024,
        });
        counted.backends[1].sockmap = Some(SockmapShare::default());
        let text = render(&counted, None);
        assert!(text.contains("PER SKB up/down"), "{text}");
        let row = |name: &str| {
            text.lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("{name} row in {text}"))
                .to_owned()
        };
        assert!(row("alpha").contains("250 B/1.0 KiB"), "{}", row("alpha"));
        assert!(row("beta").contains(" -/- "), "{}", row("beta"));
        assert!(!text.contains("advice"), "{text}");
    }

    #[test]
    fn an_advised_backend_gets_a_note_and_a_splice_backend_says_why_it_has_no_skbs() {
        let mut counted = snapshot();
        counted.backends[0].sockmap = Some(SockmapShare {
            bytes_up: 0,
            bytes_down: 64 << 20,
            skbs_up: 0,
            skbs_down: 64 << 10,
        });
        counted.backends[0].splice_advised = true;
        counted.backends[1].sockmap = Some(SockmapShare::default());
        counted.backends[1].engine = BackendEngine::Splice;
        let text = render(&counted, None);
        let beta = text.lines().find(|l| l.contains("beta")).expect("beta row");
        assert!(beta.contains("(engine: splice)"), "{beta}");
        let notes: Vec<&str> = text.lines().filter(|l| l.starts_with("advice:")).collect();
        assert_eq!(
            notes,
            [
                "advice: alpha's downloads come in 1.0 KiB skbs on average; sockmap pays per skb, \
              splice moves more behind such a backend: consider `engine: splice` on its entry"
            ],
            "{text}"
        );
    }

    #[test]
    fn the_kernel_queue_line_shows_only_once_the_engine_has_looked() {
        assert!(!render(&snapshot(), None).contains("kernel queue"));
        let mut looked = snapshot();
        looked.counters.kernel_queue = KernelQueue {
            checks: 200,
            largest_bytes: 96 << 20,
            warnings: 1,
            resets: 0,
        };
        let text = render(&looked, None);
        let line = text.lines().nth(1).expect("a second line");
        assert_eq!(
            line,
            "kernel queue towards slow receivers: largest 96.0 MiB · directions over 64.0 MiB 1 · \
             connections reset at forwarding.kernel_queue_limit 0"
        );
    }

    #[test]
    fn watch_mode_adds_throughput_columns() {
        let rates = [Some(Rate {
            up: 2048.0,
            down: 0.0,
        })];
        let text = render(&snapshot(), Some(&rates));
        assert!(text.contains("UP/s") && text.contains("DOWN/s"), "{text}");
        let alpha = text
            .lines()
            .find(|l| l.contains("alpha"))
            .expect("alpha row");
        assert!(
            alpha.contains("2.0 KiB/s") && alpha.contains("0 B/s"),
            "{alpha}"
        );
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1023.0), "1023 B");
        assert_eq!(bytes(1024.0), "1.0 KiB");
        assert_eq!(bytes(5.5 * 1024.0 * 1024.0 * 1024.0), "5.5 GiB");
    }

    #[test]
    fn uptime_shows_the_two_largest_units() {
        assert_eq!(uptime(9.0), "9s");
        assert_eq!(uptime(3_725.0), "1h02m");
        assert_eq!(uptime(90_000.0), "1d01h");
    }

    #[test]
    fn a_bad_instance_name_is_a_usage_error() {
        let args = StatsArgs {
            config: None,
            instance: Some("../etc".to_owned()),
            json: false,
            watch: None,
        };
        let error = instance(&args).expect_err("path traversal");
        assert_eq!(crate::cmd::exit_code(&error), crate::cmd::EXIT_USAGE);
        let default = StatsArgs {
            instance: None,
            ..args
        };
        assert_eq!(instance(&default).expect("default"), "default");
    }
}
