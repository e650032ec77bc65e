//! The comparison benchmark's network: four namespaces in a line, joined by
//! three veth pairs, with routes so that a packet from the client reaches the
//! target over the same devices whether or not a proxy is in the way.
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
//! only the TCP endpoints differ. `lb` has the nat table (conntrack) loaded
//! for every subject. Addresses come from [`Veth`] (RFC 2544
//! range); nothing leaves the namespaces.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, ensure};

use crate::{
    bench::cleanup,
    netns::{NetNs, Veth, ip},
};

/// A namespace registered with [`cleanup`] for as long as it lives.
#[derive(Debug)]
pub struct Ns(NetNs);

impl Ns {
    fn new() -> Result<Self> {
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
        let out = self
            .0
            .command("sysctl")
            .args(["-qw", &format!("{key}={value}")])
            .output()
            .context("run sysctl")?;
        ensure!(
            out.status.success(),
            "sysctl {key}={value} in {}: {}",
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

/// The four namespaces and the addresses each side uses. Fields drop in
/// order: veths, then namespaces.
#[derive(Debug)]
pub struct Topology {
    client_lb: Veth,
    lb_backend: Veth,
    backend_target: Veth,
    pub client: Ns,
    pub lb: Ns,
    pub backend: Ns,
    pub target: Ns,
}

impl Topology {
    /// Creates the namespaces, links and routes.
    pub fn new() -> Result<Self> {
        let client = Ns::new()?;
        let lb = Ns::new()?;
        let backend = Ns::new()?;
        let target = Ns::new()?;
        let client_lb = Veth::new(client.ns(), lb.ns())?;
        let lb_backend = Veth::new(lb.ns(), backend.ns())?;
        let backend_target = Veth::new(backend.ns(), target.ns())?;
        let topology = Self {
            client_lb,
            lb_backend,
            backend_target,
            client,
            lb,
            backend,
            target,
        };
        topology.route()?;
        Ok(topology)
    }

    fn route(&self) -> Result<()> {
        let route = |ns: &Ns, dest: &str, via: Ipv4Addr| {
            ip(&[
                "-n",
                ns.name(),
                "route",
                "add",
                dest,
                "via",
                &via.to_string(),
            ])
        };
        route(&self.client, "default", self.client_lb.b_addr)?;
        route(
            &self.lb,
            &subnet(self.backend_target.a_addr),
            self.lb_backend.b_addr,
        )?;
        route(
            &self.backend,
            &subnet(self.client_lb.a_addr),
            self.lb_backend.a_addr,
        )?;
        route(&self.target, "default", self.backend_target.a_addr)?;
        for ns in [&self.lb, &self.backend] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
        }
        // Tens of thousands of short connections per run: room for ports
        // and TIME_WAIT reuse on every side that opens connections.
        for ns in [&self.client, &self.lb, &self.backend] {
            ns.sysctl("net.ipv4.ip_local_port_range", "10000 65000")?;
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        }
        for ns in [&self.client, &self.lb, &self.backend, &self.target] {
            ns.sysctl("net.core.somaxconn", "16384")?;
        }
        // The redirect subjects need the nat table in `lb`, and with it
        // connection tracking for everything `lb` forwards. Register it from
        // the start with a rule that never matches (TEST-NET-1 source), so
        // every subject pays for conntrack alike, not only those measured
        // after the first REDIRECT rule.
        let out = self
            .lb
            .ns()
            .command("iptables")
            .args([
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-s",
                "192.0.2.1/32",
                "-p",
                "tcp",
                "-j",
                "RETURN",
            ])
            .output()
            .context("run iptables")?;
        ensure!(
            out.status.success(),
            "iptables in {}: {}",
            self.lb.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// The client's address (seen by `lb`).
    pub fn client_addr(&self) -> Ipv4Addr {
        self.client_lb.a_addr
    }

    /// Where proxies in `lb` listen.
    pub fn lb_addr(&self) -> Ipv4Addr {
        self.client_lb.b_addr
    }

    /// Where backends listen (the side facing `lb`).
    pub fn backend_addr(&self) -> Ipv4Addr {
        self.lb_backend.b_addr
    }

    /// The backend namespace's address facing the target (dante's
    /// `external`).
    pub fn backend_external_addr(&self) -> Ipv4Addr {
        self.backend_target.a_addr
    }

    /// Where the target listens.
    pub fn target_addr(&self) -> Ipv4Addr {
        self.backend_target.b_addr
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
    fn the_subnet_of_a_veth_address_is_its_aligned_slash_30() {
        assert_eq!(subnet(Ipv4Addr::new(198, 18, 1, 5)), "198.18.1.4/30");
        assert_eq!(subnet(Ipv4Addr::new(198, 18, 1, 6)), "198.18.1.4/30");
    }
}
