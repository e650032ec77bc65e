//! What the black-box e2e tests share beyond the `balancer_tests` fixtures:
//! the `balancer` binary launcher ([`Daemon`]), fault backends
//! ([`FaultBackend`]), a backend that writes in small pieces
//! ([`ChunkedBackend`]), a raw SOCKS5 client ([`socks_connect`]), a checksum
//! target ([`Target`]), `curl` and free-port helpers. Everything runs inside a
//! [`NetNs`] the test owns, so iptables rules and sockets vanish with it.
//!
//! The binary they run is the shipped `release` build ([`balancer_binary`]).

#![allow(dead_code, reason = "each e2e test file uses a different subset")]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use balancer_tests::NetNs;
use sha2::{Digest as _, Sha256};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for `instance`
/// (at most 19 characters).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 1_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A daemon config with one socks5 listener (`socks`, an ephemeral
/// loopback port) in front of two backends, each `(name, address, keys added
/// to its entry)`, round robin over `max_attempts`, no probes, and these
/// `forwarding` keys.
pub fn two_backend_config(
    instance: &str,
    backends: [(&str, SocketAddr, &str); 2],
    max_attempts: u32,
    forwarding: &str,
) -> String {
    let [(a, a_addr, a_keys), (b, b_addr, b_keys)] = backends;
    format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n  - {{ name: {a}, address: \"{a_addr}\"{a_keys} }}\n  - {{ name: {b}, address: \"{b_addr}\"{b_keys} }}\n\
         balancing: {{ strategy: round_robin, max_attempts: {max_attempts} }}\n\
         health: {{ probe: {{ enabled: false }} }}\n\
         forwarding: {{ {forwarding} }}\n"
    )
}

/// Path of the `balancer` binary ([`balancer_tests::daemon::balancer_binary`]),
/// built once per test binary.
pub fn balancer_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        balancer_tests::daemon::balancer_binary().expect("the balancer binary to test")
    })
    .clone()
}

/// A free TCP port on `ip` inside `ns` (bound, read, closed).
pub fn free_port(ns: &NetNs, ip: Ipv4Addr) -> u16 {
    ns.run(move || TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()))
        .expect("enter netns")
        .expect("bind port 0")
        .port()
}

/// A running `balancer run --config FILE` inside a namespace. Dropping it
/// stops the daemon (SIGTERM, then SIGKILL after 5 s), removes the config file
/// and the bpffs pin directory of its instance.
pub struct Daemon {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    config_path: PathBuf,
    instance: String,
}

impl Daemon {
    /// Writes `config` (YAML; must contain `instance: {instance}`), starts the
    /// daemon in `ns` and waits until it says "balancer started".
    pub fn start(ns: &NetNs, instance: &str, config: &str) -> Result<Self> {
        Self::start_logging(ns, instance, config, "info")
    }

    /// [`Daemon::start`] with `RUST_LOG` set to `filter`.
    pub fn start_logging(ns: &NetNs, instance: &str, config: &str, filter: &str) -> Result<Self> {
        let config_path = std::env::temp_dir().join(format!("{instance}.yaml"));
        // `E2E_ENGINE=splice` (or sockmap) pins what `auto` would choose, to
        // tell an engine's failure from the rest of the daemon's.
        let config = match std::env::var("E2E_ENGINE") {
            Ok(engine) => config.replace("engine: auto", &format!("engine: {engine}")),
            Err(_) => config.to_owned(),
        };
        std::fs::write(&config_path, config)?;
        // nsenter, not `ip netns exec`: the latter remounts /sys in a new
        // mount namespace, which hides bpffs (/sys/fs/bpf) from the daemon.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(balancer_binary())
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn balancer")?;
        let mut daemon = Self {
            child,
            logs: Arc::default(),
            config_path,
            instance: instance.to_owned(),
        };
        let stderr = daemon.child.stderr.take().context("stderr pipe")?;
        let logs = daemon.logs.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("E2E_ECHO_LOGS").is_some() {
                    eprintln!("[balancer] {line}");
                }
                logs.lock().expect("log lock").push(strip_ansi(&line));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if daemon.log_contains("balancer started") {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                thread::sleep(Duration::from_millis(100));
                bail!("balancer exited with {status}:\n{}", daemon.logs());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("balancer did not start within 20 s:\n{}", daemon.logs())
    }

    /// Address a listener reported in its "listening" line.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let needle = format!("listener={name} ");
        let logs = self.logs.lock().expect("log lock");
        logs.iter()
            .filter(|line| line.contains("listening") && line.contains(&needle))
            .find_map(|line| {
                let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
                addr.parse().ok()
            })
            .unwrap_or_else(|| panic!("no listening line for {name}:\n{}", logs.join("\n")))
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.logs
            .lock()
            .expect("log lock")
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Lines containing every needle.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.logs
            .lock()
            .expect("log lock")
            .iter()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .cloned()
            .collect()
    }

    /// Whether the daemon logged a breaker transition of `backend` into
    /// state `to` (case-insensitive; values may be quoted or not).
    pub fn breaker_changed(&self, backend: SocketAddr, to: &str) -> bool {
        self.breaker_transitions(backend, to) > 0
    }

    /// How many breaker transitions of `backend` into `to` the daemon logged.
    pub fn breaker_transitions(&self, backend: SocketAddr, to: &str) -> usize {
        let field = |line: &str, key: &str| -> Option<String> {
            let value = line
                .split(&format!(" {key}="))
                .nth(1)?
                .split_whitespace()
                .next()?;
            Some(value.trim_matches('"').to_owned())
        };
        let backend = backend.to_string();
        self.log_lines(&["breaker state changed"])
            .iter()
            .filter(|line| {
                field(line, "backend").as_deref() == Some(backend.as_str())
                    && field(line, "to").is_some_and(|state| state.eq_ignore_ascii_case(to))
            })
            .count()
    }

    /// The config's `instance`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The config file the daemon runs with (removed on drop).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Sends SIGHUP: the daemon re-reads [`Daemon::config_path`]. The child
    /// is the daemon itself: `nsenter` without `--fork` execs the program.
    pub fn reload(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGHUP)
    }

    /// Sends SIGTERM, as systemd or an operator would.
    pub fn terminate(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGTERM)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid fits in i32")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .with_context(|| format!("send {signal} to the daemon"))
    }

    /// Waits up to `limit` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still alive (it must not crash on bad input).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/balancer/{}", self.instance));
        // Fails while another instance still has pins there, as it should.
        let _ = std::fs::remove_dir("/sys/fs/bpf/balancer");
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How a fault backend misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Reads the greeting and closes.
    CloseMidHandshake,
    /// Completes method selection, then answers the CONNECT with REP=0x05.
    Refuses05,
    /// Reads the greeting and says nothing for `hold`.
    Slow { hold: Duration },
    /// Answers the greeting with bytes that are not SOCKS5.
    Garbage,
}

/// A small SOCKS5-shaped server that fails in one way, on a fixed address in
/// a namespace. Stops accepting (and frees the port) on drop.
pub struct FaultBackend {
    server: ThreadServer,
    /// Lets a `Slow` connection end early when the backend is dropped.
    stop: Arc<AtomicBool>,
}

impl FaultBackend {
    pub fn start(ns: &NetNs, addr: SocketAddr, fault: Fault) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let server = ThreadServer::start(ns, addr, move |stream| {
            misbehave(stream, fault, &stopping);
        })?;
        Ok(Self { server, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
}

impl Drop for FaultBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn misbehave(mut stream: TcpStream, fault: Fault, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut greeting = [0u8; 3];
    if stream.read_exact(&mut greeting).is_err() {
        return;
    }
    match fault {
        Fault::CloseMidHandshake => {}
        Fault::Refuses05 => {
            let _ = stream.write_all(&[5, 0]);
            let mut head = [0u8; 4];
            if stream.read_exact(&mut head).is_err() {
                return;
            }
            let rest = match head[3] {
                1 => 4 + 2,
                4 => 16 + 2,
                3 => {
                    let mut len = [0u8; 1];
                    if stream.read_exact(&mut len).is_err() {
                        return;
                    }
                    usize::from(len[0]) + 2
                }
                _ => return,
            };
            let mut skip = vec![0u8; rest];
            if stream.read_exact(&mut skip).is_ok() {
                let _ = stream.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
            }
        }
        Fault::Slow { hold } => {
            let until = Instant::now() + hold;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(20));
            }
        }
        Fault::Garbage => {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    }
}

/// Why a raw SOCKS5 CONNECT did not give a stream.
#[derive(Debug)]
pub enum SocksError {
    Io(std::io::Error),
    /// The server chose a method other than the one offered, or 0xFF.
    Method(u8),
    /// RFC 1929 status byte != 0.
    Auth(u8),
    /// The CONNECT reply code.
    Reply(u8),
}

impl From<std::io::Error> for SocksError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

/// SOCKS5 target of a raw CONNECT.
#[derive(Clone, Debug)]
pub enum Target {
    Addr(SocketAddr),
    Domain(String, u16),
}

/// A blocking SOCKS5 CONNECT through `proxy` (must be called in the right
/// namespace). `auth`: RFC 1929 credentials to offer instead of "no auth".
pub fn socks_connect(
    proxy: SocketAddr,
    target: &Target,
    auth: Option<(&str, &str)>,
) -> Result<TcpStream, SocksError> {
    socks_connect_pausing(proxy, target, auth, Duration::ZERO)
}

/// [`socks_connect`] by a client that waits `pause` between the method
/// selection (or authentication) and its request: to the proxy, a client
/// that far away for that round trip.
pub fn socks_connect_pausing(
    proxy: SocketAddr,
    target: &Target,
    auth: Option<(&str, &str)>,
    pause: Duration,
) -> Result<TcpStream, SocksError> {
    let mut stream = socks_negotiate(proxy, auth)?;
    if !pause.is_zero() {
        thread::sleep(pause);
    }
    socks_request(&mut stream, target)?;
    Ok(stream)
}

/// The client's method selection (and RFC 1929 authentication with
/// `auth`), without the request: the stream is left for [`socks_request`].
pub fn socks_negotiate(
    proxy: SocketAddr,
    auth: Option<(&str, &str)>,
) -> Result<TcpStream, SocksError> {
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let method = if auth.is_some() { 2 } else { 0 };
    stream.write_all(&[5, 1, method])?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice)?;
    if choice != [5, method] {
        return Err(SocksError::Method(choice[1]));
    }
    if let Some((user, pass)) = auth {
        let mut msg = vec![1, u8::try_from(user.len()).unwrap_or(u8::MAX)];
        msg.extend_from_slice(user.as_bytes());
        msg.push(u8::try_from(pass.len()).unwrap_or(u8::MAX));
        msg.extend_from_slice(pass.as_bytes());
        stream.write_all(&msg)?;
        let mut status = [0u8; 2];
        stream.read_exact(&mut status)?;
        if status[1] != 0 {
            return Err(SocksError::Auth(status[1]));
        }
    }
    Ok(stream)
}

/// The CONNECT for `target` on a negotiated stream, and its reply's bound
/// address ([`read_reply`]).
pub fn socks_request(
    stream: &mut TcpStream,
    target: &Target,
) -> Result<Option<SocketAddr>, SocksError> {
    let mut request = vec![5, 1, 0];
    match target {
        Target::Addr(SocketAddr::V4(addr)) => {
            request.push(1);
            request.extend_from_slice(&addr.ip().octets());
            request.extend_from_slice(&addr.port().to_be_bytes());
        }
        Target::Addr(SocketAddr::V6(addr)) => {
            request.push(4);
            request.extend_from_slice(&addr.ip().octets());
            request.extend_from_slice(&addr.port().to_be_bytes());
        }
        Target::Domain(host, port) => {
            request.push(3);
            request.push(u8::try_from(host.len()).unwrap_or(u8::MAX));
            request.extend_from_slice(host.as_bytes());
            request.extend_from_slice(&port.to_be_bytes());
        }
    }
    stream.write_all(&request)?;
    let bound = read_reply(stream)?;
    stream.set_read_timeout(None)?;
    Ok(bound)
}

/// Reads one SOCKS5 reply exactly; `Err(Reply(code))` unless it is success.
/// Returns its bound address (`BND.ADDR`/`BND.PORT`) when that is an IP
/// address, `None` for a name.
pub fn read_reply(stream: &mut TcpStream) -> Result<Option<SocketAddr>, SocksError> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head)?;
    if head[1] != 0 {
        return Err(SocksError::Reply(head[1]));
    }
    let rest = match head[3] {
        1 => 6,
        4 => 18,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len)?;
            usize::from(len[0]) + 2
        }
        other => {
            return Err(SocksError::Io(std::io::Error::other(format!(
                "bad ATYP {other}"
            ))));
        }
    };
    let mut bound = vec![0u8; rest];
    stream.read_exact(&mut bound)?;
    let (ip, port) = bound.split_at(rest - 2);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip: Option<std::net::IpAddr> = match head[3] {
        1 => <[u8; 4]>::try_from(ip).ok().map(Into::into),
        4 => <[u8; 16]>::try_from(ip).ok().map(Into::into),
        _ => None,
    };
    Ok(ip.map(|ip| SocketAddr::new(ip, port)))
}

/// Reads until the peer closes, within `within`: `Ok(bytes)` on FIN or on
/// RST (a server that closes with our unread bytes in its queue resets; the
/// bytes it sent before still arrived). A timeout is an error.
pub fn read_to_close(stream: &mut TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(within))?;
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        Err(error) => Err(error),
    }
}

/// A TCP server in a namespace. The client sends a big-endian `u64` N and a
/// `u64` seed; the server sends the first N bytes of that seed's [`Pattern`]
/// and closes. The client checks the SHA-256 of what arrived against
/// [`expected_digest`].
/// With N = 0 it echoes one line instead (a cheap liveness check).
pub struct ChecksumTarget(ThreadServer);

impl ChecksumTarget {
    pub fn start(ns: &NetNs, ip: std::net::IpAddr) -> Result<Self> {
        ThreadServer::start(ns, SocketAddr::new(ip, 0), serve).map(Self)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

/// A TCP server in a namespace: an accept loop on its own thread and one
/// thread per connection running `serve`; stops accepting when dropped.
pub struct ThreadServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl ThreadServer {
    pub fn start<F>(ns: &NetNs, bind: SocketAddr, serve: F) -> Result<Self>
    where
        F: Fn(TcpStream) + Clone + Send + 'static,
    {
        let listener = ns.run(move || TcpListener::bind(bind))??;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // Accepted sockets inherit O_NONBLOCK from the listener.
                        let _ = stream.set_nonblocking(false);
                        let serve = serve.clone();
                        thread::spawn(move || serve(stream));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut request = [0u8; 16];
    if stream.read_exact(&mut request).is_err() {
        return;
    }
    let (len, seed) = request.split_at(8);
    let len = u64::from_be_bytes(len.try_into().unwrap_or_default());
    let seed = u64::from_be_bytes(seed.try_into().unwrap_or_default());
    if len == 0 {
        let _ = stream.write_all(b"pong\n");
        return;
    }
    let _ = Pattern::new(seed).write(&mut stream, len);
}

/// A deterministic byte stream that costs only a memcpy per chunk: chunk `k`
/// is a window of a seeded 1 MiB pool at an offset that depends on `k`, so a
/// reordered, duplicated or lost chunk changes the SHA-256. (The library's
/// `RandomSource` hashes as it goes, which an unoptimized build does at about
/// 15 MB/s; 256 MiB transfers need the hash done by `sha256sum`.)
pub struct Pattern {
    pool: Vec<u8>,
}

const PATTERN_POOL: usize = 1 << 20;
const PATTERN_CHUNK: usize = 64 * 1024;

impl Pattern {
    pub fn new(seed: u64) -> Self {
        use rand::{RngCore, SeedableRng, rngs::SmallRng};
        let mut pool = vec![0u8; PATTERN_POOL + PATTERN_CHUNK];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut pool);
        Self { pool }
    }

    /// Writes the first `len` bytes of the stream.
    pub fn write<W: Write>(&self, out: &mut W, len: u64) -> std::io::Result<()> {
        let mut left = len;
        let mut k: usize = 0;
        while left > 0 {
            let offset = k.wrapping_mul(7919) % PATTERN_POOL;
            let n = usize::try_from(left)
                .unwrap_or(PATTERN_CHUNK)
                .min(PATTERN_CHUNK);
            out.write_all(&self.pool[offset..offset + n])?;
            left -= n as u64;
            k += 1;
        }
        Ok(())
    }
}

/// coreutils `sha256sum` fed through a pipe: real SHA-256 at native speed.
pub struct Sha256Sum {
    child: Child,
}

impl Sha256Sum {
    pub fn start() -> std::io::Result<Self> {
        let child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Self { child })
    }

    pub fn update(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.child
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("sha256sum stdin"))?
            .write_all(bytes)
    }

    pub fn finish(mut self) -> std::io::Result<[u8; 32]> {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output()?;
        let hex = String::from_utf8_lossy(&out.stdout);
        let hex = hex.split_whitespace().next().unwrap_or_default();
        let mut sha = [0u8; 32];
        for (i, byte) in sha.iter_mut().enumerate() {
            *byte = hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| std::io::Error::other(format!("sha256sum said {hex:?}")))?;
        }
        Ok(sha)
    }
}

impl Write for Sha256Sum {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What each connection to a [`ChunkedBackend`] downloads: the daemon
/// judges a backend's skbs once 64 MiB came through the verdict, and the
/// relay carries the first 64 KiB of every connection before the hand-over.
pub const CHUNKED_DOWNLOAD: u64 = 72 << 20;
const CHUNKED_SEED: u64 = 0x00ad_71ce;

/// A SOCKS5 backend that answers every CONNECT itself and then sends
/// [`CHUNKED_DOWNLOAD`] bytes of [`Pattern`] in writes of `chunk` bytes,
/// each only once the one before has left the socket, so that each reaches
/// the daemon as an skb of its own: what a proxy that copies in small
/// pieces does on a real link (microsocks, 1 KiB, over veth).
pub struct ChunkedBackend(ThreadServer);

impl ChunkedBackend {
    pub fn start(ns: &NetNs, chunk: usize) -> Self {
        let serve = move |mut stream: TcpStream| {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            if accept_connect(&mut stream).is_ok() {
                let _ = stream.set_nodelay(true);
                let mut paced = Paced { stream, chunk };
                let _ = Pattern::new(CHUNKED_SEED).write(&mut paced, CHUNKED_DOWNLOAD);
            }
        };
        Self(
            ThreadServer::start(ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), serve)
                .expect("start a chunked backend"),
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

/// One download from a [`ChunkedBackend`] through the daemon's SOCKS5
/// listener `proxy`, checked for its length and SHA-256.
pub fn chunked_download(ns: &NetNs, proxy: SocketAddr) {
    // The backends answer for any target; nothing is connected there.
    let target = Target::Addr(SocketAddr::from(([192, 0, 2, 1], 9)));
    let (got, sha) = ns
        .run(move || -> std::io::Result<(u64, [u8; 32])> {
            let mut stream = socks_connect(proxy, &target, None)
                .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            digest_to_end(&mut stream)
        })
        .expect("netns")
        .expect("a download through the daemon");
    assert_eq!(got, CHUNKED_DOWNLOAD, "download length");
    assert_eq!(
        sha,
        expected_digest(CHUNKED_DOWNLOAD, CHUNKED_SEED),
        "download checksum"
    );
}

/// Reads a no-auth greeting and an IPv4 CONNECT, answers both with success.
fn accept_connect(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods)?;
    stream.write_all(&[5, 0])?;
    // VER CMD RSV ATYP=1, IPv4 address, port.
    let mut request = [0u8; 10];
    stream.read_exact(&mut request)?;
    if request[3] != 1 {
        return Err(std::io::Error::other("the test sends IPv4 targets only"));
    }
    stream.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
}

/// Writes at most `chunk` bytes per call and returns only once the kernel
/// has sent them (`SIOCOUTQNSD`, bytes not yet sent, is 0), so the next
/// write starts a segment of its own instead of joining this one.
struct Paced {
    stream: TcpStream,
    chunk: usize,
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.stream.write(&buf[..buf.len().min(self.chunk)])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut unsent: libc::c_int = 0;
            // SAFETY: SIOCOUTQNSD writes one int through the pointer, which
            // points at `unsent`; the fd is the stream's, open for the call.
            if unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::SIOCOUTQNSD, &mut unsent) } != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if unsent == 0 {
                return Ok(n);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("unsent bytes for 5 s"));
            }
            thread::yield_now();
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SHA-256 the checksum target sends for (`len`, `seed`).
pub fn expected_digest(len: u64, seed: u64) -> [u8; 32] {
    let mut sum = Sha256Sum::start().expect("run sha256sum (coreutils)");
    Pattern::new(seed)
        .write(&mut sum, len)
        .expect("feed sha256sum");
    sum.finish().expect("sha256sum output")
}

/// Asks the checksum target on `stream` for `len` bytes and returns
/// (bytes, SHA-256) of what arrived before EOF.
pub fn fetch(stream: &mut TcpStream, len: u64, seed: u64) -> std::io::Result<(u64, [u8; 32])> {
    let mut request = [0u8; 16];
    request[..8].copy_from_slice(&len.to_be_bytes());
    request[8..].copy_from_slice(&seed.to_be_bytes());
    stream.write_all(&request)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    digest_to_end(stream)
}

/// Reads `stream` to EOF: (bytes, SHA-256) of everything that arrived.
pub fn digest_to_end(stream: &mut TcpStream) -> std::io::Result<(u64, [u8; 32])> {
    let mut sum = Sha256Sum::start()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, sum.finish()?))
}

/// One ping through an established stream to the checksum target.
pub fn ping(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(&[0u8; 16])?;
    let mut pong = [0u8; 5];
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.read_exact(&mut pong)?;
    if &pong != b"pong\n" {
        return Err(std::io::Error::other("wrong pong"));
    }
    Ok(())
}

/// A tiny HTTP/1.0 file server in a namespace for `curl`: every GET gets the
/// same body. Answers on `addr()` until dropped.
pub struct HttpTarget(ThreadServer);

impl HttpTarget {
    pub fn start(ns: &NetNs, ip: std::net::IpAddr, body: Arc<Vec<u8>>) -> Result<Self> {
        let serve = move |mut stream: TcpStream| {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        };
        ThreadServer::start(ns, SocketAddr::new(ip, 0), serve).map(Self)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

/// Runs `curl` in `ns` with `args` and returns the SHA-256 of its body
/// (written to a temp file); fails with curl's stderr on a non-zero exit.
pub fn curl_sha256(ns: &NetNs, args: &[&str]) -> Result<[u8; 32]> {
    let out = std::env::temp_dir().join(unique("e2ecurl"));
    let result = ns
        .command("curl")
        .args(["-sS", "--max-time", "60", "-o"])
        .arg(&out)
        .args(args)
        .output()
        .context("run curl (apt-get install curl)");
    let body = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    let result = result?;
    ensure!(
        result.status.success(),
        "curl {args:?}: {} {}",
        result.status,
        String::from_utf8_lossy(&result.stderr).trim()
    );
    Ok(Sha256::digest(body?).into())
}

/// Runs a command in `ns`, failing with its stderr.
pub fn sh(ns: &NetNs, program: &str, args: &[&str]) -> Result<()> {
    let out = ns.command(program).args(args).output()?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Debian's `danted` (dante-server) requiring RFC 1929 username/password,
/// checked against a throw-away system user this guard creates. Drop kills
/// the server, deletes the user and the config file.
pub struct Dante {
    child: Child,
    addr: SocketAddr,
    user: String,
    password: String,
    config: PathBuf,
}

/// `useradd`/`userdel` lock /etc/passwd: one at a time in this process.
static USERS: Mutex<()> = Mutex::new(());

impl Dante {
    pub fn start_in(ns: &NetNs, ip: Ipv4Addr, port: u16) -> Result<Self> {
        balancer_tests::require_command("danted", "dante-server");
        let user = unique("e2ed");
        let password = format!("pw-{}", rand::random::<u32>());
        {
            let _lock = USERS.lock().map_err(|_| anyhow::anyhow!("users lock"))?;
            let out = Command::new("useradd")
                .args(["-M", "-s", "/usr/sbin/nologin", &user])
                .output()?;
            ensure!(
                out.status.success(),
                "useradd {user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let config = std::env::temp_dir().join(format!("{user}.conf"));
        let mut dante = Self {
            child: Command::new("true").spawn()?,
            addr: SocketAddr::from((ip, port)),
            user,
            password,
            config,
        };
        let mut chpasswd = Command::new("chpasswd").stdin(Stdio::piped()).spawn()?;
        chpasswd
            .stdin
            .take()
            .context("chpasswd stdin")?
            .write_all(format!("{}:{}\n", dante.user, dante.password).as_bytes())?;
        ensure!(chpasswd.wait()?.success(), "chpasswd failed");
        std::fs::write(
            &dante.config,
            format!(
                "logoutput: stderr\n\
                 internal: {ip} port = {port}\n\
                 external: {ip}\n\
                 socksmethod: username\n\
                 user.privileged: root\n\
                 user.unprivileged: nobody\n\
                 client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n\
                 socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect }}\n"
            ),
        )?;
        let _ = dante.child.wait();
        dante.child = ns
            .command("danted")
            .args(["-N", "1", "-f"])
            .arg(&dante.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn danted")?;
        let addr = dante.addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ns.run(move || TcpStream::connect(addr).is_ok())? {
                return Ok(dante);
            }
            if dante.child.try_wait()?.is_some() {
                bail!("danted exited; config {}", dante.config.display());
            }
            thread::sleep(Duration::from_millis(20));
        }
        bail!("danted did not accept on {addr} within 10 s")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }
}

impl Drop for Dante {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _lock = USERS.lock();
        let _ = Command::new("userdel").arg(&self.user).output();
    }
}

/// How long one `balancer stats` call may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// `balancer stats ARGS`, killed after [`STATS_TIMEOUT`].
pub fn stats(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(balancer_binary())
        .arg("stats")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run balancer stats");
    let deadline = Instant::now() + STATS_TIMEOUT;
    while Instant::now() < deadline {
        if child.try_wait().expect("poll balancer stats").is_some() {
            return child.wait_with_output().expect("balancer stats output");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("balancer stats output");
    panic!(
        "`balancer stats {}` did not finish within {STATS_TIMEOUT:?}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `balancer stats --instance INSTANCE --json`, parsed.
pub fn stats_json(instance: &str) -> serde_json::Value {
    let output = stats(&["--instance", instance, "--json"]);
    assert!(
        output.status.success(),
        "balancer stats --json failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stats --json prints JSON")
}

/// One HTTP/1.0 exchange from inside `ns`: sends `request` as is and reads
/// to the close. Returns (status, head, body).
pub fn http_exchange(ns: &NetNs, addr: SocketAddr, request: String) -> (u16, String, String) {
    let line = request.lines().next().unwrap_or_default().to_owned();
    let response = ns
        .run(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .expect("netns")
        .unwrap_or_else(|e| panic!("{line} to {addr}: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_owned(), body.to_owned())
}
