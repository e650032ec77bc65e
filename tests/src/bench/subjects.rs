//! What is compared, and how each one is started: the config files
//! (balancer YAML, haproxy.cfg, redsocks.conf, danted.conf) are written to
//! the run's temporary directory, processes run in the topology's
//! namespaces; the transparent rows get their [`RedirectRule`]. The
//! balancer's own rules (`transparent.manage_rules`) are not used: they
//! exclude local destinations, which is every destination on loopback.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};
use balancer_common::BackendBytes;

use crate::bench::{process::Process, redirect::RedirectRule, topology::Topology};

/// Ports inside the namespaces (fresh per run), all below the ephemeral
/// range [`topology`](crate::bench::topology) sets, so no outgoing connection
/// or its TIME_WAIT can hold one when a subject binds it.
pub const TARGET_PORT: u16 = 9000;
const MICROSOCKS_PORTS: [u16; 3] = [1081, 1082, 1083];
const DANTE_PORTS: [u16; 3] = [1180, 1181, 1182];
const BALANCER_SOCKS_PORT: u16 = 1080;
const BALANCER_REDIRECT_PORT: u16 = 2345;
const BALANCER_PASSTHROUGH_PORT: u16 = 1070;
const HAPROXY_PORT: u16 = 1090;
const REDSOCKS_PORT: u16 = 2346;
/// `forwarding.mark` of the redirect subject (required by a redirect
/// listener; the REDIRECT rule matches the client's source address, so it
/// never sees the daemon's own traffic).
const MARK: u32 = 4919;

/// A forwarding engine of the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sockmap,
    Splice,
}

impl Engine {
    /// File descriptors the daemon holds per proxied connection: both
    /// sockets, and for splice two pipes (two ends each).
    pub fn fds_per_connection(self) -> u64 {
        match self {
            Self::Sockmap => 2,
            Self::Splice => 6,
        }
    }

    fn yaml(self) -> &'static str {
        match self {
            Self::Sockmap => "sockmap",
            Self::Splice => "splice",
        }
    }
}

/// Which SOCKS5 servers a proxy row sits in front of. microsocks copies
/// in 1 KiB chunks with select() and caps every path through it (0.36
/// GB/s one stream on veth, dante 2.6), so the dante rows show best what
/// the proxy in front costs on large writes, the microsocks rows on small
/// ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Three microsocks; ratios against `backend`.
    Microsocks,
    /// Three dante-servers; ratios against `backend-dante`.
    Dante,
}

impl Family {
    /// The row a proxy of this family is compared against.
    pub fn baseline(self) -> Subject {
        match self {
            Self::Microsocks => Subject::Backend,
            Self::Dante => Subject::Dante,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Microsocks => "microsocks",
            Self::Dante => "dante",
        }
    }
}

/// Which listener of the balancer a client comes in through; every
/// balancer row also has the `socks5` one, which the start waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Socks5,
    /// An iptables REDIRECT to a `redirect` listener on every address.
    Redirect,
    /// A `passthrough` listener on this address: the client's SOCKS5 goes
    /// to the backend.
    Passthrough(SocketAddr),
}

impl Way {
    /// Tells the instance names of the run's daemons apart.
    fn letter(self) -> &'static str {
        match self {
            Self::Socks5 => "s",
            Self::Redirect => "r",
            Self::Passthrough(_) => "p",
        }
    }
}

/// One row of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Client -> target, no proxy (the same devices as every other row).
    Direct,
    /// Client -> one microsocks -> target: the baseline of the microsocks
    /// rows (and of `direct` and `backend-dante`).
    Backend,
    /// Client -> one dante-server -> target: the baseline of the dante rows.
    Dante,
    /// Client -SOCKS5-> balancer -> 3 backends of the family -> target.
    BalancerSocks(Engine, Family),
    /// Client -> target, REDIRECTed in `lb` to balancer -> microsocks x3.
    BalancerRedirect(Engine),
    /// Client -SOCKS5-> balancer's passthrough listener, which hands the
    /// client's own SOCKS5 exchange to one of 3 backends of the family: the
    /// job HAProxy does in the `haproxy` rows.
    BalancerPassthrough(Engine, Family),
    /// Client -SOCKS5-> haproxy (tcp, leastconn, checks) -> 3 backends.
    Haproxy(Family),
    /// Client -> target, REDIRECTed in `lb` to redsocks -> one microsocks.
    Redsocks,
}

impl Subject {
    /// Every subject in the order of the report: each family after its
    /// baseline.
    pub const ALL: [Self; 13] = [
        Self::Direct,
        Self::Backend,
        Self::BalancerSocks(Engine::Sockmap, Family::Microsocks),
        Self::BalancerSocks(Engine::Splice, Family::Microsocks),
        Self::BalancerRedirect(Engine::Sockmap),
        Self::BalancerPassthrough(Engine::Sockmap, Family::Microsocks),
        Self::Haproxy(Family::Microsocks),
        Self::Redsocks,
        Self::Dante,
        Self::BalancerSocks(Engine::Sockmap, Family::Dante),
        Self::BalancerSocks(Engine::Splice, Family::Dante),
        Self::BalancerPassthrough(Engine::Sockmap, Family::Dante),
        Self::Haproxy(Family::Dante),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Backend => "backend",
            Self::Dante => "backend-dante",
            Self::BalancerSocks(Engine::Sockmap, Family::Microsocks) => "balancer-sockmap",
            Self::BalancerSocks(Engine::Splice, Family::Microsocks) => "balancer-splice",
            Self::BalancerSocks(Engine::Sockmap, Family::Dante) => "balancer-sockmap (dante)",
            Self::BalancerSocks(Engine::Splice, Family::Dante) => "balancer-splice (dante)",
            Self::BalancerRedirect(Engine::Sockmap) => "balancer-sockmap-redirect",
            Self::BalancerRedirect(Engine::Splice) => "balancer-splice-redirect",
            Self::BalancerPassthrough(Engine::Sockmap, Family::Microsocks) => {
                "balancer-sockmap-passthrough"
            }
            Self::BalancerPassthrough(Engine::Splice, Family::Microsocks) => {
                "balancer-splice-passthrough"
            }
            Self::BalancerPassthrough(Engine::Sockmap, Family::Dante) => {
                "balancer-sockmap-passthrough (dante)"
            }
            Self::BalancerPassthrough(Engine::Splice, Family::Dante) => {
                "balancer-splice-passthrough (dante)"
            }
            Self::Haproxy(Family::Microsocks) => "haproxy",
            Self::Haproxy(Family::Dante) => "haproxy (dante)",
            Self::Redsocks => "redsocks",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Direct => "client -> target, no proxy",
            Self::Backend => "client -SOCKS5-> microsocks -> target",
            Self::Dante => "client -SOCKS5-> dante-server -> target",
            Self::BalancerSocks(_, Family::Microsocks) => {
                "client -SOCKS5-> balancer (socks5 listener) -> 3 microsocks"
            }
            Self::BalancerSocks(_, Family::Dante) => {
                "client -SOCKS5-> balancer (socks5 listener) -> 3 dante-servers"
            }
            Self::BalancerRedirect(_) => {
                "client -> iptables REDIRECT -> balancer (redirect listener) -> 3 microsocks"
            }
            Self::BalancerPassthrough(_, Family::Microsocks) => {
                "client -SOCKS5-> balancer (passthrough listener) -> 3 microsocks"
            }
            Self::BalancerPassthrough(_, Family::Dante) => {
                "client -SOCKS5-> balancer (passthrough listener) -> 3 dante-servers"
            }
            Self::Haproxy(Family::Microsocks) => {
                "client -SOCKS5-> haproxy (tcp, leastconn, check) -> 3 microsocks"
            }
            Self::Haproxy(Family::Dante) => {
                "client -SOCKS5-> haproxy (tcp, leastconn, check) -> 3 dante-servers"
            }
            Self::Redsocks => "client -> iptables REDIRECT -> redsocks -> 1 microsocks",
        }
    }

    /// The balancer's engine, `None` for the other subjects.
    pub fn engine(self) -> Option<Engine> {
        match self {
            Self::BalancerSocks(engine, _)
            | Self::BalancerRedirect(engine)
            | Self::BalancerPassthrough(engine, _) => Some(engine),
            _ => None,
        }
    }

    /// The engine whose daemon the RSS workload (idle spliced connections)
    /// measures; `None` where it does not apply. The daemon's memory does
    /// not depend on the backends, so it is measured once per engine (the
    /// microsocks rows).
    pub fn rss_engine(self) -> Option<Engine> {
        match self {
            Self::BalancerSocks(engine, Family::Microsocks) => Some(engine),
            _ => None,
        }
    }

    /// The row whose figures of the same run this row's ratios (`b`) and
    /// added latency are taken against: `backend-dante` for the proxies in
    /// front of dante, `backend` for everything else (`backend-dante`
    /// itself included, which shows microsocks' ceiling).
    pub fn baseline(self) -> Subject {
        self.proxied_family()
            .map_or(Self::Backend, Family::baseline)
    }

    /// The family of backends a proxy row stands in front of, whose first
    /// backend its ping-pong alternates with; `None` for the rows that are
    /// no proxy (`direct` and the backends alone).
    pub fn proxied_family(self) -> Option<Family> {
        match self {
            Self::BalancerSocks(_, family)
            | Self::BalancerPassthrough(_, family)
            | Self::Haproxy(family) => Some(family),
            Self::BalancerRedirect(_) | Self::Redsocks => Some(Family::Microsocks),
            Self::Direct | Self::Backend | Self::Dante => None,
        }
    }

    /// The group the row belongs to in the report and chart: `direct`
    /// alone, then each backend family with its baseline first.
    pub fn group(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Dante => Family::Dante.name(),
            Self::BalancerSocks(_, family)
            | Self::BalancerPassthrough(_, family)
            | Self::Haproxy(family) => family.name(),
            Self::Backend | Self::BalancerRedirect(_) | Self::Redsocks => Family::Microsocks.name(),
        }
    }
}

/// How the client reaches the target through a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Connect to the target itself (no proxy, or transparent redirection).
    Plain,
    /// SOCKS5 CONNECT through this proxy.
    Socks5(SocketAddr),
}

/// The SOCKS5 backends of one run, in the `backend` namespace.
#[derive(Debug)]
pub struct Backends {
    pub microsocks: Vec<(SocketAddr, Process)>,
    /// `backend-dante` uses the first; the dante rows balance over all.
    pub dante: Vec<(SocketAddr, Process)>,
}

impl Backends {
    pub fn start(topology: &Topology, dir: &Path) -> Result<Self> {
        let ip = topology.backend_addr();
        let mut microsocks = Vec::new();
        for port in MICROSOCKS_PORTS {
            let addr = SocketAddr::from((ip, port));
            let mut process = Process::spawn(
                topology.backend(),
                &format!("microsocks-{port}"),
                Path::new("microsocks"),
                &["-i", &ip.to_string(), "-p", &port.to_string()],
                &[],
                dir,
            )?;
            process.wait_accepting(topology.backend(), addr)?;
            microsocks.push((addr, process));
        }
        let mut dante = Vec::new();
        for port in DANTE_PORTS {
            let addr = SocketAddr::from((ip, port));
            let config = dir.join(format!("danted-{port}.conf"));
            std::fs::write(&config, dante_conf(addr, topology.backend_external_addr()))?;
            // Its own pid file: the default, /var/run/danted.pid, is shared.
            let pid_file = dir.join(format!("danted-{port}.pid"));
            let mut process = Process::spawn(
                topology.backend(),
                &format!("danted-{port}"),
                Path::new("danted"),
                &[
                    "-f",
                    &config.to_string_lossy(),
                    "-p",
                    &pid_file.to_string_lossy(),
                ],
                &[],
                dir,
            )?;
            process.wait_accepting(topology.backend(), addr)?;
            dante.push((addr, process));
        }
        Ok(Self { microsocks, dante })
    }

    /// Fails, with its log, if a backend process died (a crash under 10,000
    /// connections would otherwise show up only as slow figures).
    pub fn ensure_running(&mut self) -> Result<()> {
        for (_, process) in self.microsocks.iter_mut().chain(&mut self.dante) {
            process.ensure_running()?;
        }
        Ok(())
    }

    /// The backend that is the family's row of its own (`backend`,
    /// `backend-dante`).
    pub fn first_addr(&self, family: Family) -> SocketAddr {
        match family {
            Family::Microsocks => self.microsocks[0].0,
            Family::Dante => self.dante[0].0,
        }
    }

    fn addrs(&self, family: Family) -> Vec<SocketAddr> {
        let backends = match family {
            Family::Microsocks => &self.microsocks,
            Family::Dante => &self.dante,
        };
        backends.iter().map(|(addr, _)| *addr).collect()
    }
}

/// A subject while it runs: its processes and rules, and how to reach it.
#[derive(Debug)]
pub struct Running {
    pub access: Access,
    /// The process whose own CPU and RSS are reported (none for `direct`).
    pub daemon_pid: Option<i32>,
    /// Removed before `processes` stop, so no client is redirected to a
    /// closed port.
    rules: Vec<RedirectRule>,
    processes: Vec<Process>,
    files: Vec<PathBuf>,
    bpf_instance: Option<String>,
}

impl Running {
    /// Connections the subject's REDIRECT rule has diverted so far; `None`
    /// for a subject without one. A nat rule sees only the first packet of
    /// a connection, so its packet counter counts connections: equal to
    /// what the client opened, it shows that every client connection and
    /// nothing else (no backend's own) went through the proxy.
    pub fn redirected(&self) -> Result<Option<u64>> {
        self.rules
            .first()
            .map(RedirectRule::connections)
            .transpose()
    }

    /// What the sockmap verdict has redirected so far over every backend
    /// (bytes and skbs each way), as `balancer stats --json` reads it from
    /// the pins; `None` for a subject that is no sockmap daemon.
    pub fn sockmap_share(&self, balancer: &Path) -> Result<Option<BackendBytes>> {
        let Some(instance) = &self.bpf_instance else {
            return Ok(None);
        };
        let output = std::process::Command::new(balancer)
            .args(["stats", "--instance", instance, "--json"])
            .output()
            .with_context(|| format!("cannot run {}", balancer.display()))?;
        ensure!(
            output.status.success(),
            "balancer stats --instance {instance}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let snapshot: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("balancer stats --json printed no JSON")?;
        if snapshot["engine"] != "sockmap" {
            return Ok(None);
        }
        let backends = snapshot["backends"]
            .as_array()
            .context("balancer stats --json: no backends")?;
        backends
            .iter()
            .try_fold(BackendBytes::default(), |sum, backend| {
                let field = |key: &str| {
                    backend["sockmap"][key].as_u64().with_context(|| {
                        format!("balancer stats --json: no sockmap.{key}: {backend}")
                    })
                };
                Ok(sum.wrapping_add(BackendBytes {
                    up: field("bytes_up")?,
                    down: field("bytes_down")?,
                    up_skbs: field("skbs_up")?,
                    down_skbs: field("skbs_down")?,
                }))
            })
            .map(Some)
    }

    /// Fails, with the daemon's log, if one of the subject's processes died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(Process::ensure_running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.rules.clear();
        self.processes.clear();
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
        if let Some(instance) = &self.bpf_instance {
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/balancer/{instance}"));
            let _ = std::fs::remove_dir("/sys/fs/bpf/balancer");
        }
    }
}

/// Starts `subject` for one run; `run` makes instance names unique.
/// `balancer`: the binary, and extra `forwarding:` keys for its config
/// (empty for the defaults).
pub fn start(
    subject: Subject,
    topology: &Topology,
    backends: &Backends,
    (balancer, forwarding): (&Path, &str),
    dir: &Path,
    run: usize,
) -> Result<Running> {
    let lb = topology.lb();
    let mut running = Running {
        access: Access::Plain,
        daemon_pid: None,
        rules: Vec::new(),
        processes: Vec::new(),
        files: Vec::new(),
        bpf_instance: None,
    };
    let target = SocketAddr::from((topology.target_addr(), TARGET_PORT));
    match subject {
        Subject::Direct => {}
        Subject::Backend => {
            running.access = Access::Socks5(backends.microsocks[0].0);
            running.daemon_pid = Some(backends.microsocks[0].1.pid());
        }
        Subject::Dante => {
            let (addr, process) = &backends.dante[0];
            running.access = Access::Socks5(*addr);
            running.daemon_pid = Some(process.pid());
        }
        Subject::BalancerSocks(engine, _)
        | Subject::BalancerRedirect(engine)
        | Subject::BalancerPassthrough(engine, _) => {
            let way = match subject {
                Subject::BalancerSocks(..) => Way::Socks5,
                Subject::BalancerRedirect(_) => Way::Redirect,
                _ => Way::Passthrough(SocketAddr::from((
                    topology.lb_addr(),
                    BALANCER_PASSTHROUGH_PORT,
                ))),
            };
            let family = subject.proxied_family().unwrap_or(Family::Microsocks);
            // At most 19 characters; the cleanup thread finds pins by prefix.
            let instance = format!(
                "bc{}r{run}{}{}{}",
                std::process::id(),
                way.letter(),
                &engine.yaml()[..2],
                &family.name()[..1]
            );
            let socks = SocketAddr::from((topology.lb_addr(), BALANCER_SOCKS_PORT));
            let config = dir.join(format!("{instance}.yaml"));
            std::fs::write(
                &config,
                balancer_yaml(
                    &instance,
                    socks,
                    way,
                    &backends.addrs(family),
                    (engine, forwarding),
                    target,
                ),
            )?;
            running.files.push(config.clone());
            running.bpf_instance = Some(instance.clone());
            let mut daemon = Process::spawn(
                lb,
                &instance,
                balancer,
                &["run", "--config", &config.to_string_lossy()],
                &[("RUST_LOG", "warn"), ("NO_COLOR", "1")],
                dir,
            )?;
            daemon.wait_accepting(lb, socks)?;
            if let Way::Passthrough(bind) = way {
                daemon.wait_accepting(lb, bind)?;
            }
            running.daemon_pid = Some(daemon.pid());
            running.processes.push(daemon);
            match way {
                Way::Socks5 => running.access = Access::Socks5(socks),
                Way::Redirect => {
                    running.rules.push(RedirectRule::add(
                        topology,
                        target,
                        BALANCER_REDIRECT_PORT,
                    )?);
                }
                Way::Passthrough(bind) => running.access = Access::Socks5(bind),
            }
        }
        Subject::Haproxy(family) => {
            let bind = SocketAddr::from((topology.lb_addr(), HAPROXY_PORT));
            let config = dir.join(format!("haproxy-{}.cfg", family.name()));
            std::fs::write(&config, haproxy_cfg(bind, &backends.addrs(family)))?;
            running.files.push(config.clone());
            let mut haproxy = Process::spawn(
                lb,
                "haproxy",
                Path::new("haproxy"),
                &["-db", "-f", &config.to_string_lossy()],
                &[],
                dir,
            )?;
            haproxy.wait_accepting(lb, bind)?;
            running.access = Access::Socks5(bind);
            running.daemon_pid = Some(haproxy.pid());
            running.processes.push(haproxy);
        }
        Subject::Redsocks => {
            let config = dir.join("redsocks.conf");
            std::fs::write(&config, redsocks_conf(backends.microsocks[0].0))?;
            running.files.push(config.clone());
            let mut redsocks = Process::spawn(
                lb,
                "redsocks",
                Path::new("redsocks"),
                &["-c", &config.to_string_lossy()],
                &[],
                dir,
            )?;
            redsocks.wait_accepting(lb, SocketAddr::from((topology.lb_addr(), REDSOCKS_PORT)))?;
            running.daemon_pid = Some(redsocks.pid());
            running.processes.push(redsocks);
            running
                .rules
                .push(RedirectRule::add(topology, target, REDSOCKS_PORT)?);
        }
    }
    Ok(running)
}

/// Defaults everywhere except listeners, backends, the strategy (to match
/// haproxy's leastconn), the engine under test, the probe target (the
/// default, example.com, does not exist here) and the mark a redirect
/// listener requires.
fn balancer_yaml(
    instance: &str,
    socks: SocketAddr,
    way: Way,
    backends: &[SocketAddr],
    (engine, forwarding): (Engine, &str),
    probe_target: SocketAddr,
) -> String {
    let listener = match way {
        Way::Socks5 => String::new(),
        Way::Redirect => format!(
            "  - {{ name: redir, mode: redirect, bind: \"0.0.0.0:{BALANCER_REDIRECT_PORT}\" }}\n"
        ),
        Way::Passthrough(bind) => {
            format!("  - {{ name: pass, mode: passthrough, bind: \"{bind}\" }}\n")
        }
    };
    let backends: String = backends
        .iter()
        .map(|addr| format!("  - {{ address: \"{addr}\" }}\n"))
        .collect();
    let mut extra = if way == Way::Redirect {
        format!(", mark: {MARK}")
    } else {
        String::new()
    };
    if !forwarding.is_empty() {
        extra = format!("{extra}, {forwarding}");
    }
    format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"{socks}\" }}\n{listener}\
         backends:\n{backends}\
         balancing: {{ strategy: least_connections }}\n\
         forwarding: {{ engine: {}{extra} }}\n\
         health: {{ probe: {{ target: \"{probe_target}\" }} }}\n",
        engine.yaml()
    )
}

fn haproxy_cfg(bind: SocketAddr, backends: &[SocketAddr]) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("  server s{i} {addr} check inter 2s\n"))
        .collect();
    format!(
        "global\n  maxconn 9000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
         frontend socks\n  bind {bind}\n  default_backend pool\n\
         backend pool\n  balance leastconn\n{servers}"
    )
}

fn redsocks_conf(backend: SocketAddr) -> String {
    format!(
        "base {{\n  log_debug = off;\n  log_info = off;\n  log = stderr;\n  daemon = off;\n  redirector = iptables;\n}}\n\
         redsocks {{\n  local_ip = 0.0.0.0;\n  local_port = {REDSOCKS_PORT};\n  ip = {};\n  port = {};\n  type = socks5;\n}}\n",
        backend.ip(),
        backend.port()
    )
}

fn dante_conf(internal: SocketAddr, external: Ipv4Addr) -> String {
    format!(
        "logoutput: stderr\n\
         internal: {} port = {}\n\
         external: {external}\n\
         clientmethod: none\n\
         socksmethod: none\n\
         user.privileged: root\n\
         user.unprivileged: nobody\n\
         client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n\
         socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect }}\n",
        internal.ip(),
        internal.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The YAML of a daemon on 10.0.0.1 in front of one backend.
    fn test_yaml(way: Way, engine: (Engine, &str)) -> String {
        balancer_yaml(
            "bcx",
            "10.0.0.1:1080".parse().expect("addr"),
            way,
            &["10.0.0.2:1081".parse().expect("addr")],
            engine,
            "10.0.0.3:9000".parse().expect("addr"),
        )
    }

    #[test]
    fn the_balancer_config_keeps_defaults_but_listeners_backends_and_engine() {
        let yaml = test_yaml(Way::Redirect, (Engine::Splice, "offload_after_bytes: 0"));
        assert!(
            yaml.contains("engine: splice, mark: 4919, offload_after_bytes: 0 }"),
            "{yaml}"
        );
        assert!(yaml.contains("mode: redirect"), "{yaml}");
        assert!(yaml.contains("engine: splice, mark: 4919"), "{yaml}");
        assert!(yaml.contains("strategy: least_connections"), "{yaml}");
    }

    #[test]
    fn the_passthrough_row_adds_a_passthrough_listener_and_no_mark() {
        let pass = "10.0.0.1:1070".parse().expect("addr");
        let yaml = test_yaml(Way::Passthrough(pass), (Engine::Sockmap, ""));
        assert!(
            yaml.contains("{ name: pass, mode: passthrough, bind: \"10.0.0.1:1070\" }"),
            "{yaml}"
        );
        assert!(yaml.contains("mode: socks5"), "{yaml}");
        assert!(yaml.contains("engine: sockmap }"), "{yaml}");
    }

    #[test]
    fn each_row_is_named_once_and_measured_against_its_own_backends() {
        let mut names: Vec<_> = Subject::ALL.iter().map(|subject| subject.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Subject::ALL.len(), "{names:?}");
        let passthrough = Subject::BalancerPassthrough(Engine::Sockmap, Family::Dante);
        assert!(Subject::ALL.contains(&passthrough));
        assert_eq!(passthrough.baseline(), Subject::Dante);
        assert_eq!(passthrough.group(), "dante");
        assert_eq!(
            Subject::BalancerPassthrough(Engine::Sockmap, Family::Microsocks).baseline(),
            Subject::Backend
        );
    }

    #[test]
    fn haproxy_checks_every_server_and_balances_by_least_connections() {
        let cfg = haproxy_cfg(
            "10.0.0.1:1090".parse().expect("addr"),
            &[
                "10.0.0.2:1081".parse().expect("addr"),
                "10.0.0.2:1082".parse().expect("addr"),
            ],
        );
        assert_eq!(cfg.matches(" check").count(), 2, "{cfg}");
        assert!(cfg.contains("balance leastconn"), "{cfg}");
    }
}
