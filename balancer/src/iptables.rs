//! The netfilter rules and policy routes that bring traffic to `redirect`
//! and `tproxy` listeners, built as data from a [`Config`]: no process is
//! run here ([`runner`] runs them), so the exact argv of every command is
//! unit-tested.
//!
//! Everything lives in one chain per table, `BALANCER-<instance>`, reached
//! by one jump per built-in chain; removing the jumps and the chain removes
//! every rule, whatever the config said when it was applied.
//!
//! - `redirect`: nat OUTPUT (this host's connections) and nat PREROUTING
//!   (forwarded ones) jump to the chain, which returns for the daemon's own
//!   packets (`forwarding.mark`), local destinations and the backends, and
//!   REDIRECTs the remaining TCP to the listener's port.
//! - `tproxy`: mangle PREROUTING jumps to the chain, which returns for the
//!   same exclusions, marks packets of already-diverted connections, and
//!   TPROXYs the rest with `transparent.tproxy_mark`; `ip rule fwmark <mark>
//!   lookup <table>` and `local default dev lo table <table>` deliver marked
//!   packets locally.
//!
//! IPv4 goes through `iptables`/`ip -4`, IPv6 through `ip6tables`/`ip -6`.
//! A listener bound to `[::]` is dual-stack and gets both.

pub mod runner;

use std::net::IpAddr;

use crate::config::{Config, Host, ListenerConfig, ListenerMode};

/// One command line: program then arguments.
pub type Argv = Vec<String>;

/// Prefix of our chains; the instance name follows.
pub const CHAIN_PREFIX: &str = "BALANCER-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    fn any_network(self) -> &'static str {
        match self {
            Self::V4 => "0.0.0.0/0",
            Self::V6 => "::/0",
        }
    }

    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Nat,
    Mangle,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Mangle => "mangle",
        }
    }
}

/// How to tell whether an [`Item`] is already installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Installed when this command exits with status 0.
    Succeeds(Argv),
    /// Installed when this command prints anything on stdout (`ip rule` and
    /// `ip route` list commands exit 0 either way).
    PrintsSomething(Argv),
}

/// One thing `apply` installs and `remove` takes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Our chain in `table`; apply creates it if missing and then flushes it,
    /// so that its rules always equal the current config.
    Chain {
        family: Family,
        table: Table,
        chain: String,
    },
    /// A rule appended to our chain (removed with the chain).
    ChainRule {
        family: Family,
        table: Table,
        chain: String,
        spec: Vec<String>,
    },
    /// A rule in a built-in chain (`from`) that jumps to ours.
    Jump {
        family: Family,
        table: Table,
        from: &'static str,
        spec: Vec<String>,
    },
    /// `ip rule add fwmark <mark> lookup <route_table>`.
    MarkRule {
        family: Family,
        mark: u32,
        route_table: u32,
    },
    /// `ip route add local default dev lo table <route_table>`.
    LocalRoute { family: Family, route_table: u32 },
}

fn argv<I, S>(parts: I) -> Argv
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    parts.into_iter().map(Into::into).collect()
}

fn iptables(family: Family, table: Table, op: &str, chain: &str, spec: &[String]) -> Argv {
    let mut cmd = argv([family.iptables(), "-w", "-t", table.name(), op, chain]);
    cmd.extend(spec.iter().cloned());
    cmd
}

impl Item {
    /// The command that installs the item.
    #[must_use]
    pub fn add(&self) -> Argv {
        match self {
            Self::Chain {
                family,
                table,
                chain,
            } => iptables(*family, *table, "-N", chain, &[]),
            Self::ChainRule {
                family,
                table,
                chain,
                spec,
            } => iptables(*family, *table, "-A", chain, spec),
            Self::Jump {
                family,
                table,
                from,
                spec,
            } => iptables(*family, *table, "-A", from, spec),
            Self::MarkRule {
                family,
                mark,
                route_table,
            } => mark_rule(*family, "add", *mark, *route_table),
            Self::LocalRoute {
                family,
                route_table,
            } => local_route(*family, "add", *route_table),
        }
    }

    /// How to test whether the item is installed.
    #[must_use]
    pub fn check(&self) -> Check {
        match self {
            Self::Chain {
                family,
                table,
                chain,
            } => Check::Succeeds(iptables(*family, *table, "-S", chain, &[])),
            Self::ChainRule {
                family,
                table,
                chain,
                spec,
            } => Check::Succeeds(iptables(*family, *table, "-C", chain, spec)),
            Self::Jump {
                family,
                table,
                from,
                spec,
            } => Check::Succeeds(iptables(*family, *table, "-C", from, spec)),
            Self::MarkRule {
                family,
                mark,
                route_table,
            } => Check::PrintsSomething(mark_rule(*family, "show", *mark, *route_table)),
            Self::LocalRoute {
                family,
                route_table,
            } => Check::PrintsSomething(argv([
                "ip",
                family.ip_flag(),
                "route",
                "show",
                "table",
                &route_table.to_string(),
                "type",
                "local",
                family.any_network(),
            ])),
        }
    }

    /// The commands that take one copy of the item out, in order; empty for
    /// a chain rule, which goes with its chain.
    #[must_use]
    pub fn delete(&self) -> Vec<Argv> {
        match self {
            Self::Chain {
                family,
                table,
                chain,
            } => vec![
                iptables(*family, *table, "-F", chain, &[]),
                iptables(*family, *table, "-X", chain, &[]),
            ],
            Self::ChainRule { .. } => Vec::new(),
            Self::Jump {
                family,
                table,
                from,
                spec,
            } => vec![iptables(*family, *table, "-D", from, spec)],
            Self::MarkRule {
                family,
                mark,
                route_table,
            } => vec![mark_rule(*family, "del", *mark, *route_table)],
            Self::LocalRoute {
                family,
                route_table,
            } => vec![local_route(*family, "del", *route_table)],
        }
    }

    /// For a [`Item::Chain`], the command that empties it (apply refills).
    #[must_use]
    pub fn flush(&self) -> Option<Argv> {
        match self {
            Self::Chain {
                family,
                table,
                chain,
            } => Some(iptables(*family, *table, "-F", chain, &[])),
            _ => None,
        }
    }
}

fn mark_rule(family: Family, op: &str, mark: u32, route_table: u32) -> Argv {
    argv([
        "ip",
        family.ip_flag(),
        "rule",
        op,
        "fwmark",
        &mark.to_string(),
        "lookup",
        &route_table.to_string(),
    ])
}

fn local_route(family: Family, op: &str, route_table: u32) -> Argv {
    argv([
        "ip",
        family.ip_flag(),
        "route",
        op,
        "local",
        family.any_network(),
        "dev",
        "lo",
        "table",
        &route_table.to_string(),
    ])
}

/// Everything one config needs, in install order (chains before the rules
/// in them, rules before the jumps that make them live).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub items: Vec<Item>,
}

impl Plan {
    /// The items for every `redirect` and `tproxy` listener of `config`;
    /// empty when there is none.
    #[must_use]
    pub fn for_config(config: &Config) -> Self {
        let chain = format!("{CHAIN_PREFIX}{}", config.instance);
        let mut plan = Self::default();
        for family in [Family::V4, Family::V6] {
            if let Some(l) = listener_for(config, ListenerMode::Redirect, family) {
                plan.redirect(config, l, family, &chain);
            }
            if let Some(l) = listener_for(config, ListenerMode::Tproxy, family) {
                plan.tproxy(config, l, family, &chain);
            }
        }
        plan
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The commands that install the plan on a host that has none of it
    /// (what `balancer iptables print` shows).
    #[must_use]
    pub fn add_commands(&self) -> Vec<Argv> {
        self.items.iter().map(Item::add).collect()
    }

    /// The commands that take the plan out again, in order: jumps first, so
    /// that no packet enters a chain being deleted.
    #[must_use]
    pub fn delete_commands(&self) -> Vec<Argv> {
        self.removal_order().flat_map(Item::delete).collect()
    }

    /// Items in the order `remove` handles them (reverse install order).
    pub fn removal_order(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().rev()
    }

    fn redirect(&mut self, config: &Config, l: &ListenerConfig, family: Family, chain: &str) {
        let table = Table::Nat;
        self.chain_with_exclusions(config, family, table, chain);
        self.rule(
            family,
            table,
            chain,
            [
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                &l.bind.port().to_string(),
            ],
        );
        for from in ["OUTPUT", "PREROUTING"] {
            self.jump(family, table, from, chain);
        }
    }

    fn tproxy(&mut self, config: &Config, l: &ListenerConfig, family: Family, chain: &str) {
        let table = Table::Mangle;
        let mark = config.transparent.tproxy_mark.to_string();
        self.chain_with_exclusions(config, family, table, chain);
        // Packets of connections already diverted to a transparent socket
        // only need the mark that routes them locally.
        let socket = ["-p", "tcp", "-m", "socket", "--transparent"];
        self.rule(
            family,
            table,
            chain,
            socket
                .into_iter()
                .chain(["-j", "MARK", "--set-mark", &mark]),
        );
        self.rule(
            family,
            table,
            chain,
            socket.into_iter().chain(["-j", "RETURN"]),
        );
        let mut tproxy = argv(["-p", "tcp", "-j", "TPROXY", "--on-port"]);
        tproxy.push(l.bind.port().to_string());
        if !l.bind.ip().is_unspecified() {
            tproxy.extend(argv(["--on-ip".to_owned(), l.bind.ip().to_string()]));
        }
        tproxy.extend(argv(["--tproxy-mark", &mark]));
        self.rule(family, table, chain, tproxy);
        self.jump(family, table, "PREROUTING", chain);
        let route_table = config.transparent.route_table;
        self.items.push(Item::MarkRule {
            family,
            mark: config.transparent.tproxy_mark,
            route_table,
        });
        self.items.push(Item::LocalRoute {
            family,
            route_table,
        });
    }

    /// Creates the chain and the RETURN rules that keep the daemon's own
    /// packets, local destinations and the backends out of the diversion.
    fn chain_with_exclusions(
        &mut self,
        config: &Config,
        family: Family,
        table: Table,
        chain: &str,
    ) {
        self.items.push(Item::Chain {
            family,
            table,
            chain: chain.to_owned(),
        });
        let mark = config.forwarding.mark;
        if mark != 0 {
            self.rule(
                family,
                table,
                chain,
                ["-m", "mark", "--mark", &mark.to_string(), "-j", "RETURN"],
            );
        }
        self.rule(
            family,
            table,
            chain,
            ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"],
        );
        let mut seen = Vec::new();
        for b in &config.backends {
            let Host::Ip(ip) = b.address.host() else {
                continue; // names are covered by the mark only
            };
            let ports = b.address.ports();
            let dport = if b.address.is_range() {
                format!("{}:{}", ports.start(), ports.end())
            } else {
                ports.start().to_string()
            };
            // Loopback is already LOCAL.
            if Family::of(*ip) != family || ip.is_loopback() || seen.contains(&(*ip, dport.clone()))
            {
                continue;
            }
            self.rule(
                family,
                table,
                chain,
                [
                    "-d",
                    &ip.to_string(),
                    "-p",
                    "tcp",
                    "--dport",
                    &dport,
                    "-j",
                    "RETURN",
                ],
            );
            seen.push((*ip, dport));
        }
    }

    fn rule<I, S>(&mut self, family: Family, table: Table, chain: &str, spec: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.items.push(Item::ChainRule {
            family,
            table,
            chain: chain.to_owned(),
            spec: argv(spec),
        });
    }

    fn jump(&mut self, family: Family, table: Table, from: &'static str, chain: &str) {
        self.items.push(Item::Jump {
            family,
            table,
            from,
            spec: argv(["-p", "tcp", "-j", chain]),
        });
    }
}

/// The listener of `mode` that takes `family`'s traffic (validation allows
/// at most one); a `[::]` listener is dual-stack.
fn listener_for(config: &Config, mode: ListenerMode, family: Family) -> Option<&ListenerConfig> {
    config.listeners.iter().find(|l| {
        let ip = l.bind.ip();
        l.mode == mode && (Family::of(ip) == family || (ip.is_ipv6() && ip.is_unspecified()))
    })
}

/// `argv` as one line a POSIX shell reads back to the same words.
#[must_use]
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
