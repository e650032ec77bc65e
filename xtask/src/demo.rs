//! `cargo xtask demo`: balancer in front of three microsocks backends and a
//! local HTTP target, all on loopback, with a curl line to try and live
//! per-backend stats. Everything it starts or writes is removed on Ctrl-C
//! or as soon as any of its processes dies.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::children::{self, Children};
use crate::process::{self, Command};
use crate::workspace::Workspace;

const BACKENDS: usize = 3;
/// How long a process gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one `balancer stats` call may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of the generated file the curl line downloads.
const BIG_FILE_BYTES: usize = 64 << 20;
const BIG_FILE: &str = "demo-64MiB.bin";

/// Options of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip scripts/setup.sh (when the machine is known to be ready).
    #[arg(long)]
    no_setup: bool,
    /// Seconds between two stats prints.
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// Run this balancer binary instead of building one.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

/// Loopback ports of every listener in the demo.
struct Ports {
    backends: Vec<u16>,
    http: u16,
    socks: u16,
    metrics: u16,
}

impl Ports {
    /// Binds port 0 once per listener, holding every socket until all are
    /// chosen so the ports are distinct, then releases them for the
    /// children. A port taken by someone else in between shows up as a
    /// child that fails to listen, with its log.
    fn pick() -> Result<Self> {
        let listeners = (0..BACKENDS + 3)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<std::io::Result<Vec<_>>>()
            .context("could not bind a free loopback port")?;
        let mut ports = listeners
            .iter()
            .map(|listener| listener.local_addr().map(|addr| addr.port()))
            .collect::<std::io::Result<Vec<_>>>()
            .context("could not read a bound port")?;
        let backends = ports.split_off(3);
        let &[http, socks, metrics] = ports.as_slice() else {
            bail!(
                "picked {} ports, expected 3 besides the backends",
                ports.len()
            );
        };
        Ok(Self {
            backends,
            http,
            socks,
            metrics,
        })
    }
}

/// A fresh directory for the demo's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("balancer-demo-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("could not remove stale {}", path.display()))?;
        }
        std::fs::create_dir_all(path.join("www"))
            .with_context(|| format!("could not create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!("demo: could not remove {}: {error}", self.0.display());
        }
    }
}

/// Runs the demo until Ctrl-C or until one of its processes dies.
pub fn run(ws: &Workspace, args: &Args) -> Result<()> {
    if !args.no_setup {
        ws.setup()?;
    }
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => ws.build_balancer_release()?,
    };
    children::catch_interrupts()?;

    // Declared before the children so it is removed after they are stopped.
    let dir = TempDir::create()?;
    let mut children = Children::default();
    let ports = Ports::pick()?;

    for (index, port) in ports.backends.iter().enumerate() {
        let name = format!("microsocks backend {}", index + 1);
        children.spawn(
            &name,
            Command::new("microsocks").args(["-i", "127.0.0.1", "-p", &port.to_string()]),
            &dir.0.join(format!("microsocks-{}.log", index + 1)),
        )?;
    }
    write_target_files(&dir.0.join("www"))?;
    children.spawn(
        "HTTP target (python3 -m http.server)",
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &ports.http.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir.0.join("www")),
        &dir.0.join("http.log"),
    )?;
    for port in ports.backends.iter().chain([&ports.http]) {
        wait_listening(&mut children, *port)?;
    }

    let config = dir.0.join("balancer.yaml");
    std::fs::write(&config, config_yaml(&ports))
        .with_context(|| format!("could not write {}", config.display()))?;
    let daemon_log = dir.0.join("balancer.log");
    let mut daemon = Command::new(&binary);
    daemon.args(["run", "--config"]).arg(&config);
    if std::env::var_os("RUST_LOG").is_none() {
        daemon.env("RUST_LOG", "info");
    }
    children.spawn("balancer", &mut daemon, &daemon_log)?;
    // The metrics port opens after every listener is bound; a probe of the
    // SOCKS5 port itself would show in the stats below as a client whose
    // handshake failed.
    if let Err(error) = wait_listening(&mut children, ports.metrics) {
        bail!(
            "balancer did not start: {error:#}\nIts config was:\n{}",
            config_yaml(&ports)
        );
    }

    println!(
        "\nbalancer is listening on 127.0.0.1:{socks} (SOCKS5) in front of {BACKENDS} microsocks backends.\n\
         Try:\n\n  curl --socks5-hostname 127.0.0.1:{socks} http://127.0.0.1:{http}/hello.txt\n  \
         curl --socks5-hostname 127.0.0.1:{socks} -o /dev/null http://127.0.0.1:{http}/{BIG_FILE}\n\n\
         Metrics: http://127.0.0.1:{metrics}/metrics   Config: {config}\nCtrl-C stops everything.\n",
        socks = ports.socks,
        http = ports.http,
        metrics = ports.metrics,
        config = config.display(),
    );

    let mut stats = Stats::new(binary, config, daemon_log, &dir.0);
    let started = Instant::now();
    loop {
        if sleep_unless_interrupted(Duration::from_secs(args.interval)) {
            eprintln!("\ndemo: interrupted; stopping everything");
            return Ok(());
        }
        children.check()?;
        println!("--- t+{}s ---", started.elapsed().as_secs());
        stats.print();
    }
}

/// `hello.txt` and a larger file of pseudo-random bytes for a transfer
/// long enough to see in the stats.
fn write_target_files(www: &Path) -> Result<()> {
    std::fs::write(www.join("hello.txt"), "hello through balancer\n")
        .context("could not write hello.txt")?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = Vec::with_capacity(BIG_FILE_BYTES);
    while bytes.len() < BIG_FILE_BYTES {
        // xorshift64: cheap bytes that no link compresses away.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::write(www.join(BIG_FILE), bytes).with_context(|| format!("could not write {BIG_FILE}"))
}

/// The demo's config, in the schema of balancer's config parser.
fn config_yaml(ports: &Ports) -> String {
    let mut yaml = format!(
        "instance: demo\nlisteners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:{}\" }}\nbackends:\n",
        ports.socks
    );
    for port in &ports.backends {
        let _infallible = writeln!(yaml, "  - {{ address: \"127.0.0.1:{port}\" }}");
    }
    // Probes go to the local HTTP target: the default (example.com) is
    // unreachable on an offline machine and would count against every backend.
    let _infallible = write!(
        yaml,
        "balancing: {{ strategy: least_connections }}\n\
         health: {{ probe: {{ target: \"127.0.0.1:{}\", interval: 10s, timeout: 2s }} }}\n\
         forwarding: {{ engine: auto }}\nmetrics: {{ listen: \"127.0.0.1:{}\" }}\n",
        ports.http, ports.metrics
    );
    yaml
}

/// Waits until something accepts on 127.0.0.1:`port`, failing early when
/// a child dies or the user interrupts.
fn wait_listening(children: &mut Children, port: u16) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if children::interrupted() {
            bail!("interrupted while waiting for {addr}");
        }
        children.check()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on {addr} after {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sleeps in short steps; true as soon as an interrupt arrived.
fn sleep_unless_interrupted(total: Duration) -> bool {
    let deadline = Instant::now() + total;
    while Instant::now() < deadline {
        if children::interrupted() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    children::interrupted()
}

/// What the demo prints every interval: `balancer stats` while that
/// subcommand works, else the daemon's new log lines.
struct Stats {
    binary: PathBuf,
    config: PathBuf,
    daemon_log: PathBuf,
    /// Where one `balancer stats` call writes its output.
    scratch: PathBuf,
    /// `balancer stats` failed at least once before it ever worked.
    use_log: bool,
    /// Bytes of the daemon log already printed.
    log_offset: u64,
}

impl Stats {
    fn new(binary: PathBuf, config: PathBuf, daemon_log: PathBuf, dir: &Path) -> Self {
        Self {
            binary,
            config,
            daemon_log,
            scratch: dir.join("stats.out"),
            use_log: false,
            log_offset: 0,
        }
    }

    fn print(&mut self) {
        if !self.use_log {
            match self.query() {
                Ok(text) => {
                    print!("{text}");
                    return;
                }
                Err(error) => {
                    println!(
                        "demo: `balancer stats` is unavailable ({error:#}); showing the daemon's log instead"
                    );
                    self.use_log = true;
                }
            }
        }
        match self.new_log_lines() {
            Ok(text) if text.is_empty() => println!("(no new log lines)"),
            Ok(text) => text.lines().for_each(|line| println!("balancer | {line}")),
            Err(error) => println!(
                "demo: could not read {}: {error:#}",
                self.daemon_log.display()
            ),
        }
    }

    /// One bounded `balancer stats --config <file>` call.
    fn query(&self) -> Result<String> {
        let out = File::create(&self.scratch).context("could not create the stats scratch file")?;
        let err = out
            .try_clone()
            .context("could not reopen the stats scratch file")?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(["stats", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", process::display(&cmd)))?;
        let deadline = Instant::now() + STATS_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().context("could not poll balancer stats")? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ignored = child.kill();
                let _ignored = child.wait();
                bail!(
                    "`{}` took longer than {STATS_TIMEOUT:?}",
                    process::display(&cmd)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text =
            std::fs::read_to_string(&self.scratch).context("could not read the stats output")?;
        if !status.success() || text.trim().is_empty() {
            bail!("`{}` {status}: {}", process::display(&cmd), text.trim());
        }
        Ok(text)
    }

    fn new_log_lines(&mut self) -> Result<String> {
        let mut log = File::open(&self.daemon_log)?;
        log.seek(SeekFrom::Start(self.log_offset))?;
        let mut text = String::new();
        let read = log.read_to_string(&mut text)?;
        self.log_offset += u64::try_from(read)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_every_backend_and_the_chosen_ports() {
        let ports = Ports {
            backends: vec![40001, 40002, 40003],
            http: 40004,
            socks: 40005,
            metrics: 40006,
        };
        let yaml = config_yaml(&ports);
        assert!(yaml.contains(r#"bind: "127.0.0.1:40005""#), "{yaml}");
        for port in 40001..=40003 {
            assert!(
                yaml.contains(&format!(r#"address: "127.0.0.1:{port}""#)),
                "{yaml}"
            );
        }
        assert!(yaml.contains(r#"listen: "127.0.0.1:40006""#), "{yaml}");
        assert!(
            !yaml.contains(r#"address: "127.0.0.1:40004""#),
            "the HTTP target is not a backend: {yaml}"
        );
        assert!(
            yaml.contains(r#"target: "127.0.0.1:40004""#),
            "probes go to the HTTP target: {yaml}"
        );
    }

    #[test]
    fn picked_ports_are_distinct() {
        let ports = Ports::pick().expect("loopback ports");
        let mut all = ports.backends.clone();
        all.extend([ports.http, ports.socks, ports.metrics]);
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
        assert_eq!(ports.backends.len(), BACKENDS);
    }
}
