//! The transparent rows' way in: one iptables REDIRECT rule in `lb`'s nat
//! table that sends the client's TCP to the target to a proxy's local port.
//! It matches the client's source address and the target, in PREROUTING on
//! veth (the client's packets are forwarded through `lb`) or OUTPUT on
//! loopback (generated in the same namespace), so the backends' own
//! connections to the target, and with them the proxies', never match. Its
//! packet counter proves it: a nat rule sees only the first packet of a
//! connection. Removed on drop, and gone with the namespace anyway.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
};

use anyhow::{Context, Result, ensure};

use crate::bench::topology::{Kind, Topology};

/// `iptables -t nat -A <chain>` in `lb`: the client's TCP to the target is
/// redirected to a local port. The chain is the topology's
/// ([`Kind::redirect_chain`]); matching the client's source keeps the
/// backends' own connections to the target (and with them the proxies')
/// out. Removed on drop.
#[derive(Debug)]
pub struct RedirectRule {
    lb: String,
    spec: Vec<String>,
}

impl RedirectRule {
    pub fn add(topology: &Topology, target: SocketAddr, port: u16) -> Result<Self> {
        let rule = Self {
            lb: topology.lb().name().to_owned(),
            spec: redirect_spec(topology.kind(), topology.client_addr(), target, port),
        };
        rule.iptables("-A")?;
        Ok(rule)
    }

    /// The rule's packet counter (`iptables -v -S CHAIN`).
    pub fn connections(&self) -> Result<u64> {
        let chain = &self.spec[0];
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.lb, "iptables", "-t", "nat", "-v", "-S",
            ])
            .arg(chain)
            .output()
            .context("run iptables")?;
        ensure!(
            out.status.success(),
            "iptables -v -S {chain}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        rule_packets(&listing, &self.spec)
            .with_context(|| format!("no counter for {} in:\n{listing}", self.spec.join(" ")))
    }

    fn iptables(&self, action: &str) -> Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.lb, "iptables", "-t", "nat", action])
            .args(&self.spec)
            .output()
            .context("run iptables")?;
        ensure!(
            out.status.success(),
            "iptables {action} {}: {}",
            self.spec.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for RedirectRule {
    fn drop(&mut self) {
        let _ = self.iptables("-D");
    }
}

/// The rule of [`RedirectRule`], from its chain on.
fn redirect_spec(kind: Kind, client: Ipv4Addr, target: SocketAddr, port: u16) -> Vec<String> {
    [
        kind.redirect_chain(),
        "-p",
        "tcp",
        "-s",
        &client.to_string(),
        "-d",
        &target.ip().to_string(),
        "--dport",
        &target.port().to_string(),
        "-j",
        "REDIRECT",
        "--to-ports",
        &port.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The packet counter of the rule `spec` in `iptables -v -S` output, which
/// prints addresses as `/32` networks, adds `-m tcp` and puts `-c PACKETS
/// BYTES` before the target: the line is found by its source, destination,
/// port and `--to-ports`, the parts that tell the benchmark's rules apart.
fn rule_packets(listing: &str, spec: &[String]) -> Option<u64> {
    let value = |flag: &str| {
        let at = spec.iter().position(|word| word == flag)?;
        spec.get(at + 1).map(String::as_str)
    };
    let (source, destination) = (value("-s")?, value("-d")?);
    let (dport, to_ports) = (value("--dport")?, value("--to-ports")?);
    fn host(word: Option<&str>) -> Option<&str> {
        word.map(|word| word.trim_end_matches("/32"))
    }
    listing.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |flag: &str| {
            let at = words.iter().position(|word| *word == flag)?;
            words.get(at + 1).copied()
        };
        let matches = words.first() == Some(&"-A")
            && words.get(1).copied() == spec.first().map(String::as_str)
            && host(after("-s")) == Some(source)
            && host(after("-d")) == Some(destination)
            && after("--dport") == Some(dport)
            && after("--to-ports") == Some(to_ports);
        if matches {
            after("-c")?.parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_redirect_catches_only_the_clients_connections_in_nat_output() {
        let target: SocketAddr = "127.0.0.5:9000".parse().expect("addr");
        let spec =
            redirect_spec(Kind::Loopback, Ipv4Addr::new(127, 0, 0, 2), target, 2346).join(" ");
        assert_eq!(
            spec,
            "OUTPUT -p tcp -s 127.0.0.2 -d 127.0.0.5 --dport 9000 -j REDIRECT --to-ports 2346"
        );
        let veth = redirect_spec(Kind::Veth, Ipv4Addr::new(198, 18, 0, 1), target, 2345);
        assert_eq!(veth[0], "PREROUTING");
    }

    #[test]
    fn the_redirect_counter_is_read_from_its_own_rule_only() {
        let spec = redirect_spec(
            Kind::Loopback,
            Ipv4Addr::new(127, 0, 0, 2),
            "127.0.0.5:9000".parse().expect("addr"),
            2346,
        );
        let listing = "-P OUTPUT ACCEPT -c 900 54000\n\
             -A OUTPUT -s 192.0.2.1/32 -p tcp -c 0 0 -j RETURN\n\
             -A OUTPUT -s 127.0.0.2/32 -d 127.0.0.5/32 -p tcp -m tcp --dport 9000 -c 511 30660 -j REDIRECT --to-ports 2345\n\
             -A OUTPUT -s 127.0.0.2/32 -d 127.0.0.5/32 -p tcp -m tcp --dport 9000 -c 512 30720 -j REDIRECT --to-ports 2346\n";
        assert_eq!(rule_packets(listing, &spec), Some(512));
        assert_eq!(rule_packets("-P OUTPUT ACCEPT -c 0 0\n", &spec), None);
    }
}
