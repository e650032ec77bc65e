//! The semantic pass over a parsed [`Config`]: rules that span several keys
//! or that a single value cannot know (uniqueness, ordering of two
//! durations, marks the iptables rules rely on). Each problem names the key
//! path it is about, e.g. `backends[1].name`.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::SocketAddr,
};

use super::{Config, DurationValue, ListenerMode, sections::MIN_KERNEL_QUEUE_LIMIT};

/// SOCKS5 (RFC 1929) carries username and password lengths in one byte.
const MAX_CREDENTIAL_LEN: usize = 255;
/// `BALANCER-` plus the instance must fit iptables' 28-byte chain names.
pub(crate) const MAX_INSTANCE_LEN: usize = 19;

/// One violated rule and the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path in the file, e.g. `listeners[0].auth.users`.
    pub key: String,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.kind)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    #[error(
        "`{0}` is not a valid instance name: use 1-{MAX_INSTANCE_LEN} letters, digits, `_` or `-`"
    )]
    BadInstance(String),
    #[error("at least one listener is required")]
    NoListeners,
    #[error("at least one backend is required")]
    NoBackends,
    #[error("must not be empty")]
    Empty,
    #[error("`{name}` is already used by {first}")]
    DuplicateName { name: String, first: String },
    #[error("{addr} is already bound by {first}")]
    DuplicateBind { addr: SocketAddr, first: String },
    #[error("authentication applies to socks5 listeners only, this one is {0}")]
    AuthOnNonSocks5(ListenerMode),
    #[error("authentication is required but no users are listed")]
    NoUsers,
    #[error("is {len} bytes long, SOCKS5 allows at most {MAX_CREDENTIAL_LEN}")]
    CredentialTooLong { len: usize },
    #[error("a password needs a username")]
    PasswordWithoutUsername,
    #[error("no backend has scope `{0}`")]
    UnknownPool(String),
    #[error(
        "{mode} listeners need forwarding.mark != 0 so the iptables rules can skip the daemon's own connections"
    )]
    MarkRequired { mode: ListenerMode },
    #[error(
        "only one {mode} listener per address family: {first} already takes this family's traffic"
    )]
    SecondTransparentListener { mode: ListenerMode, first: String },
    #[error("must be at least 1")]
    Zero,
    #[error("must be non-zero")]
    ZeroDuration,
    #[error("{value} exceeds {other_key} ({other})")]
    Exceeds {
        value: DurationValue,
        other_key: &'static str,
        other: DurationValue,
    },
    #[error("must differ from forwarding.mark ({0})")]
    SameMark(u32),
    #[error("routing table {0} is outside 1-252")]
    BadRouteTable(u32),
    #[error(
        "{0} is below {MIN_KERNEL_QUEUE_LIMIT} bytes (64 MiB), which a bulk transfer can queue in passing; use 0 for no limit"
    )]
    KernelQueueLimitTooSmall(u64),
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn push(&mut self, key: impl Into<String>, kind: ProblemKind) {
        self.problems.push(Problem {
            key: key.into(),
            kind,
        });
    }

    fn non_zero(&mut self, key: &str, value: DurationValue) {
        if value.is_zero() {
            self.push(key, ProblemKind::ZeroDuration);
        }
    }

    fn credential(&mut self, key: String, value: &str) {
        if value.len() > MAX_CREDENTIAL_LEN {
            self.push(key, ProblemKind::CredentialTooLong { len: value.len() });
        }
    }
}

/// Every problem in `config`, in file order; empty when it is valid.
pub(crate) fn problems(config: &Config) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    instance(&mut c, config);
    listeners(&mut c, config);
    backends(&mut c, config);
    sections(&mut c, config);
    c.problems
}

fn instance(c: &mut Checker, config: &Config) {
    let name = &config.instance;
    if !is_valid_instance(name) {
        c.push("instance", ProblemKind::BadInstance(name.clone()));
    }
}

pub(super) fn is_valid_instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INSTANCE_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn listeners(c: &mut Checker, config: &Config) {
    if config.listeners.is_empty() {
        c.push("listeners", ProblemKind::NoListeners);
    }
    let scopes: HashSet<&str> = config
        .backends
        .iter()
        .filter_map(|b| b.scope.as_deref())
        .collect();
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut binds: HashMap<SocketAddr, String> = HashMap::new();
    // (mode, is_ipv6) -> first listener taking that family's diverted traffic
    let mut transparent: HashMap<(ListenerMode, bool), String> = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if l.name.is_empty() {
            c.push(format!("{key}.name"), ProblemKind::Empty);
        } else if let Some(first) = names.get(l.name.as_str()) {
            let kind = ProblemKind::DuplicateName {
                name: l.name.clone(),
                first: first.clone(),
            };
            c.push(format!("{key}.name"), kind);
        } else {
            names.insert(&l.name, key.clone());
        }
        if let Some(first) = binds.get(&l.bind) {
            let kind = ProblemKind::DuplicateBind {
                addr: l.bind,
                first: first.clone(),
            };
            c.push(format!("{key}.bind"), kind);
        } else {
            binds.insert(l.bind, key.clone());
        }
        if let Some(auth) = &l.auth {
            if l.mode != ListenerMode::Socks5 {
                c.push(format!("{key}.auth"), ProblemKind::AuthOnNonSocks5(l.mode));
            }
            if auth.required && auth.users.is_empty() {
                c.push(format!("{key}.auth.users"), ProblemKind::NoUsers);
            }
            for (j, user) in auth.users.iter().enumerate() {
                let user_key = format!("{key}.auth.users[{j}]");
                if user.username.is_empty() {
                    c.push(format!("{user_key}.username"), ProblemKind::Empty);
                }
                c.credential(format!("{user_key}.username"), &user.username);
                c.credential(format!("{user_key}.password"), user.password.expose());
            }
        }
        if let Some(pool) = &l.pool
            && !scopes.contains(pool.as_str())
        {
            c.push(
                format!("{key}.pool"),
                ProblemKind::UnknownPool(pool.clone()),
            );
        }
        if matches!(l.mode, ListenerMode::Redirect | ListenerMode::Tproxy) {
            if l.mode == ListenerMode::Redirect && config.forwarding.mark == 0 {
                c.push(
                    format!("{key}.mode"),
                    ProblemKind::MarkRequired { mode: l.mode },
                );
            }
            // A v6 wildcard is dual-stack: it takes both families.
            let ip = l.bind.ip();
            let families = if ip.is_ipv6() && ip.is_unspecified() {
                vec![false, true]
            } else {
                vec![ip.is_ipv6()]
            };
            for v6 in families {
                if let Some(first) = transparent.get(&(l.mode, v6)) {
                    let kind = ProblemKind::SecondTransparentListener {
                        mode: l.mode,
                        first: first.clone(),
                    };
                    c.push(format!("{key}.bind"), kind);
                    break;
                }
                transparent.insert((l.mode, v6), key.clone());
            }
        }
    }
    if let Some(addr) = config.metrics.listen
        && let Some(first) = binds.get(&addr)
    {
        let kind = ProblemKind::DuplicateBind {
            addr,
            first: first.clone(),
        };
        c.push("metrics.listen", kind);
    }
    if config
        .listeners
        .iter()
        .any(|l| l.mode == ListenerMode::Tproxy)
    {
        let t = &config.transparent;
        if t.tproxy_mark == 0 {
            c.push("transparent.tproxy_mark", ProblemKind::Zero);
        } else if t.tproxy_mark == config.forwarding.mark {
            c.push(
                "transparent.tproxy_mark",
                ProblemKind::SameMark(t.tproxy_mark),
            );
        }
        if !(1..=252).contains(&t.route_table) {
            c.push(
                "transparent.route_table",
                ProblemKind::BadRouteTable(t.route_table),
            );
        }
    }
}

fn backends(c: &mut Checker, config: &Config) {
    if config.backends.is_empty() {
        c.push("backends", ProblemKind::NoBackends);
    }
    for (i, b) in config.backends.iter().enumerate() {
        let key = format!("backends[{i}]");
        if b.weight == 0 {
            c.push(format!("{key}.weight"), ProblemKind::Zero);
        }
        if b.name.as_deref() == Some("") {
            c.push(format!("{key}.name"), ProblemKind::Empty);
        }
        if b.password.is_some() && b.username.is_none() {
            c.push(
                format!("{key}.password"),
                ProblemKind::PasswordWithoutUsername,
            );
        }
        if let Some(username) = &b.username {
            c.credential(format!("{key}.username"), username);
        }
        if let Some(password) = &b.password {
            c.credential(format!("{key}.password"), password.expose());
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut reported: HashSet<usize> = HashSet::new();
    for e in config.expanded_backends() {
        match seen.get(&e.name) {
            Some(&first) if reported.insert(e.source_index) => {
                let field = if config.backends[e.source_index].name.is_some() {
                    "name"
                } else {
                    "address"
                };
                let kind = ProblemKind::DuplicateName {
                    name: e.name.clone(),
                    first: format!("backends[{first}]"),
                };
                c.push(format!("backends[{}].{field}", e.source_index), kind);
            }
            Some(_) => {}
            None => {
                seen.insert(e.name, e.source_index);
            }
        }
    }
}

fn sections(c: &mut Checker, config: &Config) {
    let b = &config.balancing;
    if b.max_attempts == 0 {
        c.push("balancing.max_attempts", ProblemKind::Zero);
    }
    if b.sticky_sessions.enabled {
        c.non_zero("balancing.sticky_sessions.ttl", b.sticky_sessions.ttl);
    }
    let h = &config.health;
    if h.circuit_threshold == 0 {
        c.push("health.circuit_threshold", ProblemKind::Zero);
    }
    if h.metrics_window_size == 0 {
        c.push("health.metrics_window_size", ProblemKind::Zero);
    }
    c.non_zero("health.recovery_interval", h.recovery_interval);
    if h.recovery_interval > h.max_recovery_interval {
        let kind = ProblemKind::Exceeds {
            value: h.recovery_interval,
            other_key: "health.max_recovery_interval",
            other: h.max_recovery_interval,
        };
        c.push("health.recovery_interval", kind);
    }
    if h.probe.enabled {
        c.non_zero("health.probe.interval", h.probe.interval);
        c.non_zero("health.probe.timeout", h.probe.timeout);
        if h.probe.timeout > h.probe.interval {
            let kind = ProblemKind::Exceeds {
                value: h.probe.timeout,
                other_key: "health.probe.interval",
                other: h.probe.interval,
            };
            c.push("health.probe.timeout", kind);
        }
    }
    if config
        .metrics
        .token
        .as_ref()
        .is_some_and(|t| t.expose().is_empty())
    {
        c.push("metrics.token", ProblemKind::Empty);
    }
    let f = &config.forwarding;
    c.non_zero("forwarding.connect_timeout", f.connect_timeout);
    c.non_zero("forwarding.handshake_timeout", f.handshake_timeout);
    if f.kernel_queue_limit != 0 && f.kernel_queue_limit < MIN_KERNEL_QUEUE_LIMIT {
        c.push(
            "forwarding.kernel_queue_limit",
            ProblemKind::KernelQueueLimitTooSmall(f.kernel_queue_limit),
        );
    }
}
