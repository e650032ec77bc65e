//! The comparison benchmark's networks, one per [`Kind`]. Each is built in
//! namespaces this process creates (never the host's), registered with
//! [`cleanup`], and deleted on drop.
//!
//! `veth`: four namespaces in a line, joined by three veth pairs, with
//! routes so that a packet from the client reaches the target over the same
//! devices whether or not a proxy is in the way.
//!
//! ```text
//!  client ──veth── lb ──veth── backend ──veth── target
//!  (workloads)    (balancer,   (microsocks x3,  (sink/source/echo)
//!                  haproxy,     dante)
//!                  redsocks)
//! ```
//!
//! `lb` and `backend` forward IPv4 (`ip_forward=1`), so `direct` (client ->
//! target, no proxy) crosses the same three veth pairs as every proxied path;
//! only the TCP endpoints differ. Addresses come from [`Veth`] (RFC 2544
//! range); nothing leaves the namespaces.
//!
//! `loopback`: one namespace, every role on its own address of `lo`:
//!
//! ```text
//!  client 127.0.0.2 -> lb 127.0.0.3 -> backend 127.0.0.4 -> target 127.0.0.5
//! ```
//!
//! Every hop is a loopback TCP connection inside that one namespace. The
//! client binds 127.0.0.2 as its source: nothing else in the namespace uses
//! it (the proxies and microsocks leave their source to the kernel, which
//! picks 127.0.0.1; dante's `external` is 127.0.0.4), so a transparent rule
//! matching `-s 127.0.0.2` catches the client's connections to the target and
//! never a backend's own.
//!
//! Either way the namespace holding the proxies has the nat table (with it,
//! connection tracking) loaded from the start, for every subject alike.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    bench::cleanup,
    netns::{NetNs, Veth, ip},
};

/// A namespace registered with [`cleanup`] for as long as it lives.
#[derive(Debug)]
pub struct Ns(NetNs);

impl Ns {
    pub fn new() -> Result<Self> {
        let ns = NetNs::new()?;
        cleanup::add_namespace(ns.name());
        Ok(Self(ns))
    }

    pub fn ns(&self) -> &NetNs {
        &self.0
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Sets a sysctl inside the namespace (`ip netns exec NS sysctl -w`).
    fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
    }

    /// Sets the TCP congestion control of the namespace. A new namespace
    /// inherits the host's default, which is a setting of the machine, not
    /// of what is measured: with `bbr` (the default of these machines) one
    /// stream over the veth line made 2.0 GB/s with no proxy and 1.06
    /// through dante alone, with `cubic` (the kernel's own default) 6.8 and
    /// 2.5 in the same hour.
    pub fn use_congestion_control(&self, name: &str) -> Result<()> {
        self.sysctl("net.ipv4.tcp_congestion_control", name)
    }

    /// Runs `program args` inside the namespace, failing with its stderr.
    fn exec(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self
            .0
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("run {program}"))?;
        ensure!(
            out.status.success(),
            "{program} {} in {}: {}",
            args.join(" "),
            self.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        cleanup::remove_namespace(self.0.name());
    }
}

/// Which network the benchmark runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Four namespaces joined by veth pairs.
    Veth,
    /// One namespace, everything over `lo`.
    Loopback,
}

impl Kind {
    pub const ALL: [Self; 2] = [Self::Veth, Self::Loopback];

    pub fn name(self) -> &'static str {
        match self {
            Self::Veth => "veth",
            Self::Loopback => "loopback",
        }
    }

    /// One line for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Veth => {
                "veth: client -veth- lb -veth- backend -veth- target (namespaces; lb and \
                 backend forward IPv4, so `direct` crosses the same three veth pairs)"
            }
            Self::Loopback => {
                "loopback: one namespace, every hop over `lo` (client 127.0.0.2, proxies \
                 127.0.0.3, backends 127.0.0.4, target 127.0.0.5); transparent rows \
                 REDIRECT the client's connections in nat OUTPUT"
            }
        }
    }

    /// The nat chain where a transparent subject's REDIRECT rule goes: the
    /// client's packets are forwarded through `lb` on veth, but generated
    /// locally on loopback.
    pub fn redirect_chain(self) -> &'static str {
        match self {
            Self::Veth => "PREROUTING",
            Self::Loopback => "OUTPUT",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|kind| kind.name() == name) {
            Some(kind) => Ok(kind),
            None => bail!("unknown topology {name:?}; known: veth, loopback"),
        }
    }
}

/// The topologies a `--topology` value selects: one, or `both` (veth first).
pub fn parse_selection(value: &str) -> Result<Vec<Kind>> {
    if value == "both" {
        return Ok(Kind::ALL.to_vec());
    }
    value
        .parse()
        .map(|kind| vec![kind])
        .context("--topology takes veth, loopback or both")
}

/// The addresses each role uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Addresses {
    /// The client's source address (what a transparent rule matches).
    client: Ipv4Addr,
    /// Where proxies listen.
    lb: Ipv4Addr,
    /// Where backends listen.
    backend: Ipv4Addr,
    /// dante's `external`: the backends' source towards the target.
    backend_external: Ipv4Addr,
    /// Where the target listens.
    target: Ipv4Addr,
}

/// The loopback roles; 127.0.0.1 stays what the kernel picks for every
/// socket that does not bind a source.
const LOOPBACK: Addresses = Addresses {
    client: Ipv4Addr::new(127, 0, 0, 2),
    lb: Ipv4Addr::new(127, 0, 0, 3),
    backend: Ipv4Addr::new(127, 0, 0, 4),
    backend_external: Ipv4Addr::new(127, 0, 0, 4),
    target: Ipv4Addr::new(127, 0, 0, 5),
};

/// Role indices into [`Topology::namespaces`] on veth.
const CLIENT: usize = 0;
const LB: usize = 1;
const BACKEND: usize = 2;
const TARGET: usize = 3;

/// Fails unless the kernel offers the congestion control `name`, so that a
/// wrong `--congestion-control` stops the benchmark before it builds anything.
pub fn check_congestion_control(name: &str) -> Result<()> {
    let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .context("read tcp_available_congestion_control")?;
    ensure!(
        available.split_whitespace().any(|known| known == name),
        "--congestion-control {name:?} is not available here \
         (tcp_available_congestion_control: {})",
        available.trim()
    );
    Ok(())
}

/// The namespaces of one topology and the addresses each role uses. Fields
/// drop in order: veths, then namespaces.
#[derive(Debug)]
pub struct Topology {
    kind: Kind,
    #[expect(dead_code, reason = "held only to delete the links first, on drop")]
    veths: Vec<Veth>,
    /// veth: client, lb, backend, target; loopback: the one namespace.
    namespaces: Vec<Ns>,
    addrs: Addresses,
}

impl Topology {
    /// Creates the namespaces, links, routes and sysctls of `kind`.
    pub fn new(kind: Kind) -> Result<Self> {
        let topology = match kind {
            Kind::Veth => Self::veth()?,
            Kind::Loopback => Self {
                kind,
                veths: Vec::new(),
                namespaces: vec![Ns::new()?],
                addrs: LOOPBACK,
            },
        };
        topology.tune()?;
        Ok(topology)
    }

    fn veth() -> Result<Self> {
        let namespaces = vec![Ns::new()?, Ns::new()?, Ns::new()?, Ns::new()?];
        let link = |a: usize, b: usize| Veth::new(namespaces[a].ns(), namespaces[b].ns());
        let veths = vec![
            link(CLIENT, LB)?,
            link(LB, BACKEND)?,
            link(BACKEND, TARGET)?,
        ];
        let (client_lb, lb_backend, backend_target) = (&veths[0], &veths[1], &veths[2]);
        let addrs = Addresses {
            client: client_lb.a_addr,
            lb: client_lb.b_addr,
            backend: lb_backend.b_addr,
            backend_external: backend_target.a_addr,
            target: backend_target.b_addr,
        };
        let route = |role: usize, dest: &str, via: Ipv4Addr| {
            ip(&[
                "-n",
                namespaces[role].name(),
                "route",
                "add",
                dest,
                "via",
                &via.to_string(),
            ])
        };
        route(CLIENT, "default", client_lb.b_addr)?;
        route(LB, &subnet(backend_target.a_addr), lb_backend.b_addr)?;
        route(BACKEND, &subnet(client_lb.a_addr), lb_backend.a_addr)?;
        route(TARGET, "default", backend_target.a_addr)?;
        for role in [LB, BACKEND] {
            namespaces[role].sysctl("net.ipv4.ip_forward", "1")?;
        }
        Ok(Self {
            kind: Kind::Veth,
            veths,
            namespaces,
            addrs,
        })
    }

    /// Sysctls for every namespace, and the nat table where proxies run.
    fn tune(&self) -> Result<()> {
        // Tens of thousands of short connections per run: room for ports
        // and TIME_WAIT reuse on every side that opens connections (the
        // target only accepts, which does not hurt). dante binds its
        // outgoing socket to port 0 before connecting, which skips TIME_WAIT
        // reuse: with 10,000 connections per subject its namespace ran out
        // of ports within the minute TIME_WAIT lasts, and dante answered
        // "network unreachable". A short TIME_WAIT table lets the kernel drop
        // the oldest instead; nothing on these links arrives late.
        for ns in &self.namespaces {
            ns.sysctl("net.ipv4.ip_local_port_range", "10000 65000")?;
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
            ns.sysctl("net.ipv4.tcp_max_tw_buckets", "4096")?;
            ns.sysctl("net.core.somaxconn", "16384")?;
        }
        // The redirect subjects need the nat table where the proxies run,
        // and with it connection tracking for every packet there. Register
        // it from the start with a rule that never matches (TEST-NET-1
        // source), in the chain the REDIRECT rules use, so every subject
        // pays for conntrack alike, not only those measured after the first
        // REDIRECT rule.
        self.lb_ns().exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                self.kind.redirect_chain(),
                "-s",
                "192.0.2.1/32",
                "-p",
                "tcp",
                "-j",
                "RETURN",
            ],
        )
    }

    /// Steers the receive processing of every interface in the balancer's
    /// namespace to the CPUs of `mask` (RPS, hex as in `rps_cpus`). The
    /// sockmap verdict runs there, and the psock work it queues runs on the
    /// same CPU (a per-CPU workqueue), so this is how an operator places the
    /// kernel's forwarding work. On loopback it steers every hop.
    pub fn steer_lb_receive(&self, mask: &str) -> Result<()> {
        ensure!(
            !mask.is_empty() && mask.chars().all(|c| c.is_ascii_hexdigit() || c == ','),
            "--lb-rps-cpus takes a hex CPU mask such as 2, not {mask:?}"
        );
        self.lb_ns().exec(
            "sh",
            &[
                "-c",
                &format!("for f in /sys/class/net/*/queues/rx-*/rps_cpus; do echo {mask} > $f || exit 1; done"),
            ],
        )
    }

    /// Sets the TCP congestion control of every namespace of the run
    /// ([`Ns::use_congestion_control`]).
    pub fn use_congestion_control(&self, name: &str) -> Result<()> {
        for ns in &self.namespaces {
            ns.use_congestion_control(name)?;
        }
        Ok(())
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn role(&self, role: usize) -> &Ns {
        match self.kind {
            Kind::Veth => &self.namespaces[role],
            Kind::Loopback => &self.namespaces[0],
        }
    }

    fn lb_ns(&self) -> &Ns {
        self.role(LB)
    }

    /// Where the workloads run.
    pub fn client(&self) -> &NetNs {
        self.role(CLIENT).ns()
    }

    /// Where the balancer, haproxy and redsocks run, and their rules go.
    pub fn lb(&self) -> &NetNs {
        self.lb_ns().ns()
    }

    /// Where the SOCKS5 backends run.
    pub fn backend(&self) -> &NetNs {
        self.role(BACKEND).ns()
    }

    /// Where the target runs.
    pub fn target(&self) -> &NetNs {
        self.role(TARGET).ns()
    }

    /// The client's address (what a transparent rule matches as source).
    pub fn client_addr(&self) -> Ipv4Addr {
        self.addrs.client
    }

    /// The source address the client must bind: on loopback the kernel
    /// would pick 127.0.0.1, shared with the backends' own connections; on
    /// veth the route already gives the client its own.
    pub fn client_source(&self) -> Option<Ipv4Addr> {
        match self.kind {
            Kind::Veth => None,
            Kind::Loopback => Some(self.addrs.client),
        }
    }

    /// Where proxies listen.
    pub fn lb_addr(&self) -> Ipv4Addr {
        self.addrs.lb
    }

    /// Where backends listen.
    pub fn backend_addr(&self) -> Ipv4Addr {
        self.addrs.backend
    }

    /// The backends' source address towards the target (dante's
    /// `external`).
    pub fn backend_external_addr(&self) -> Ipv4Addr {
        self.addrs.backend_external
    }

    /// Where the target listens.
    pub fn target_addr(&self) -> Ipv4Addr {
        self.addrs.target
    }
}

/// The /30 network that `addr` (the first host of a [`Veth`]) belongs to.
fn subnet(addr: Ipv4Addr) -> String {
    let network = u32::from(addr) & !0b11;
    format!("{}/30", Ipv4Addr::from(network))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_congestion_control_the_kernel_lacks_is_refused_naming_those_it_has() {
        // reno is always built in.
        check_congestion_control("reno").expect("reno is built into every kernel");
        let error = check_congestion_control("no-such-cc").expect_err("unknown name");
        let message = error.to_string();
        assert!(message.contains("\"no-such-cc\""), "{message}");
        assert!(message.contains("reno"), "{message}");
    }

    #[test]
    fn the_subnet_of_a_veth_address_is_its_aligned_slash_30() {
        assert_eq!(subnet(Ipv4Addr::new(198, 18, 1, 5)), "198.18.1.4/30");
        assert_eq!(subnet(Ipv4Addr::new(198, 18, 1, 6)), "198.18.1.4/30");
    }

    #[test]
    fn both_selects_veth_then_loopback_and_unknown_names_are_errors() {
        assert_eq!(
            parse_selection("both").expect("both"),
            [Kind::Veth, Kind::Loopback]
        );
        assert_eq!(
            parse_selection("loopback").expect("loopback"),
            [Kind::Loopback]
        );
        let error = parse_selection("lo").expect_err("an error");
        assert!(
            format!("{error:#}").contains("known: veth, loopback"),
            "{error:#}"
        );
    }

    #[test]
    fn on_loopback_the_client_source_is_an_address_no_other_role_uses() {
        let others = [
            LOOPBACK.lb,
            LOOPBACK.backend,
            LOOPBACK.backend_external,
            LOOPBACK.target,
            Ipv4Addr::LOCALHOST,
        ];
        assert!(!others.contains(&LOOPBACK.client), "{LOOPBACK:?}");
        assert!(LOOPBACK.client.is_loopback() && LOOPBACK.target.is_loopback());
    }
}
