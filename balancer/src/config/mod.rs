//! The configuration file: its shape, its defaults (one `Default` impl per
//! section, each field documented with its default), loading, and the
//! expansion of port ranges into backends.
//!
//! Values are checked twice: while deserialising (newtypes in [`values`], so
//! serde_yaml reports key path, line and column) and then by a semantic pass
//! (`validate`) for rules that span several keys. A [`Config`] that
//! [`Config::load`] returns has passed both; nothing binds a socket or loads
//! BPF before that.

mod sections;
mod validate;
pub mod values;

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::forward::BackendEngine;

pub use self::{
    sections::{
        BalancingConfig, Engine, ForwardingConfig, HealthConfig, MetricsConfig, ProbeConfig,
        StickyConfig, Strategy, TransparentConfig,
    },
    validate::{Problem, ProblemKind},
    values::{BackendAddress, DurationValue, Host, HostPort, Secret, ValueError},
};

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The io and yaml errors are part of the message, not `source()`, so
    // that printing the error chain shows them once.
    #[error("cannot read config file {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Syntax, an unknown key or a malformed value; `line`/`column` are
    /// 1-based and 0 when serde_yaml gave no location.
    #[error("{}:{line}:{column}: {error}", origin(path.as_deref()))]
    Parse {
        path: Option<PathBuf>,
        line: usize,
        column: usize,
        error: serde_yaml::Error,
    },
    #[error("invalid config {}:{}", origin(path.as_deref()), list(problems))]
    Invalid {
        path: Option<PathBuf>,
        problems: Vec<Problem>,
    },
}

fn origin(path: Option<&Path>) -> String {
    path.map_or_else(|| "<command line>".to_owned(), |p| p.display().to_string())
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// The whole file. Every key is optional except `backends`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `default`. Names this daemon among others on the host: the bpffs pin
    /// directory `/sys/fs/bpf/balancer/<instance>` and the iptables chain
    /// `BALANCER-<instance>`. Letters, digits, `_`, `-`; at most 19 bytes
    /// (iptables chain names are limited to 28).
    pub instance: String,
    /// One socks5 listener `socks` on `127.0.0.1:1080`.
    pub listeners: Vec<ListenerConfig>,
    /// None; at least one is required.
    pub backends: Vec<BackendConfig>,
    pub balancing: BalancingConfig,
    pub health: HealthConfig,
    pub forwarding: ForwardingConfig,
    pub transparent: TransparentConfig,
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance: "default".to_owned(),
            listeners: vec![ListenerConfig::socks5(
                "socks",
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1080)),
            )],
            backends: Vec::new(),
            balancing: BalancingConfig::default(),
            health: HealthConfig::default(),
            forwarding: ForwardingConfig::default(),
            transparent: TransparentConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// How clients reach the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerMode {
    /// A SOCKS5 server: the client names its target.
    Socks5,
    /// Plain TCP relayed to a backend that speaks SOCKS5 to the client itself.
    Passthrough,
    /// Connections REDIRECTed by iptables nat; target from `SO_ORIGINAL_DST`.
    Redirect,
    /// Connections diverted by iptables TPROXY; target is the local address.
    Tproxy,
}

impl fmt::Display for ListenerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Socks5 => "socks5",
            Self::Passthrough => "passthrough",
            Self::Redirect => "redirect",
            Self::Tproxy => "tproxy",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique among listeners; used in logs and metrics labels.
    pub name: String,
    pub mode: ListenerMode,
    /// Address to listen on; unique among listeners.
    pub bind: SocketAddr,
    /// Client authentication (socks5 listeners only); none by default.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Restricts the listener to backends whose `scope` equals this; all
    /// backends by default.
    #[serde(default)]
    pub pool: Option<String>,
}

impl ListenerConfig {
    /// A socks5 listener without authentication or pool.
    #[must_use]
    pub fn socks5(name: &str, bind: SocketAddr) -> Self {
        Self {
            name: name.to_owned(),
            mode: ListenerMode::Socks5,
            bind,
            auth: None,
            pool: None,
        }
    }
}

/// SOCKS5 username/password authentication (RFC 1929) offered to clients.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `true`: clients must authenticate. `false`: clients may also choose
    /// "no authentication". Writing an `auth` block means you want it, so
    /// the default is `true`.
    pub required: bool,
    /// Accepted credentials; none by default, and must be non-empty when
    /// `required`.
    pub users: Vec<UserConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: true,
            users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    pub password: Secret,
}

/// One `backends:` entry; a port range stands for one backend per port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: BackendAddress,
    /// Display name; defaults to `host:port`. For a range, `name-1`,
    /// `name-2`, ... in port order.
    #[serde(default)]
    pub name: Option<String>,
    /// SOCKS5 username for this backend (none by default).
    #[serde(default)]
    pub username: Option<String>,
    /// SOCKS5 password; requires `username`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Relative share for `weighted_random`; at least 1. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
    /// Pool name that listeners select with `pool:`; none by default.
    #[serde(default)]
    pub scope: Option<String>,
    /// Free-form labels, shown in stats; empty by default.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Used only when no primary backend is available. Default false.
    #[serde(default)]
    pub backup: bool,
    /// `splice`: this backend's connections go through splice even when
    /// the daemon forwards with sockmap. Default `auto` (`forwarding.engine`).
    #[serde(default)]
    pub engine: BackendEngine,
}

fn one() -> u32 {
    1
}

impl BackendConfig {
    /// A backend with no name, credentials or labels, weight 1.
    #[must_use]
    pub fn new(address: BackendAddress) -> Self {
        Self {
            address,
            name: None,
            username: None,
            password: None,
            weight: 1,
            scope: None,
            metadata: BTreeMap::new(),
            backup: false,
            engine: BackendEngine::Auto,
        }
    }
}

/// One backend after port-range expansion: what the registry holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpandedBackend {
    /// Stable and unique: `name`, `name-<i>` (1-based, ranges), or `host:port`.
    pub name: String,
    pub host: Host,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub weight: u32,
    pub scope: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub backup: bool,
    pub engine: BackendEngine,
    /// Index of the `backends:` entry it came from.
    pub source_index: usize,
}

impl ExpandedBackend {
    /// `host:port`, IPv6 in brackets.
    #[must_use]
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    ///
    /// # Errors
    /// [`ConfigError::Io`] naming the path, [`ConfigError::Parse`] with
    /// file:line:column, [`ConfigError::Invalid`] with the key paths.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load_unvalidated(path)?;
        config.validate().map_err(|e| e.with_path(path))?;
        Ok(config)
    }

    /// Reads and parses `path` without the semantic pass, for callers that
    /// amend the config (command-line overrides) and then call
    /// [`Config::validate`].
    ///
    /// # Errors
    /// [`ConfigError::Io`] or [`ConfigError::Parse`].
    pub fn load_unvalidated(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::parse_unvalidated(&text).map_err(|e| e.with_path(path))
    }

    /// Parses and validates YAML text that came from no file.
    ///
    /// # Errors
    /// As [`Config::load`], without a path.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config = Self::parse_unvalidated(text)?;
        config.validate()?;
        Ok(config)
    }

    fn parse_unvalidated(text: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_str(text).map_err(|error| {
            let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigError::Parse {
                path: None,
                line,
                column,
                error,
            }
        })
    }

    /// The semantic pass: rules that span keys. Every problem is reported,
    /// not only the first.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] (without a path).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = validate::problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: None,
                problems,
            })
        }
    }

    /// Every backend after port-range expansion, in file order, with stable
    /// names (see [`ExpandedBackend::name`]).
    #[must_use]
    pub fn expanded_backends(&self) -> Vec<ExpandedBackend> {
        self.backends
            .iter()
            .enumerate()
            .flat_map(|(source_index, b)| {
                b.address
                    .ports()
                    .enumerate()
                    .map(move |(i, port)| ExpandedBackend {
                        name: match (&b.name, b.address.is_range()) {
                            (Some(name), false) => name.clone(),
                            (Some(name), true) => format!("{name}-{}", i + 1),
                            (None, _) => format!("{}:{port}", b.address.host()),
                        },
                        host: b.address.host().clone(),
                        port,
                        username: b.username.clone(),
                        password: b.password.clone(),
                        weight: b.weight,
                        scope: b.scope.clone(),
                        metadata: b.metadata.clone(),
                        backup: b.backup,
                        engine: b.engine,
                        source_index,
                    })
            })
            .collect()
    }

    /// `/sys/fs/bpf/balancer/<instance>`, where the sockmap engine pins its
    /// maps and `balancer stats` finds them.
    #[must_use]
    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/balancer").join(&self.instance)
    }

    /// `/run/balancer/<instance>`, where the daemon keeps its status file
    /// for `balancer stats`; see [`run_dir`].
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        run_dir(&self.instance)
    }
}

/// `/run/balancer/<instance>`: the run directory of an instance, for the
/// daemon (which writes its status there) and for `balancer stats --instance`
/// (which has no config file to ask).
#[must_use]
pub fn run_dir(instance: &str) -> PathBuf {
    Path::new("/run/balancer").join(instance)
}

/// Whether `name` is a valid `instance`: 1-19 letters, digits, `_` or `-`
/// (so it is also safe as one path component).
#[must_use]
pub fn is_valid_instance(name: &str) -> bool {
    validate::is_valid_instance(name)
}

impl ConfigError {
    /// Attaches the file name to an error from [`Config::parse`].
    #[must_use]
    pub fn with_path(self, file: &Path) -> Self {
        match self {
            Self::Parse {
                line,
                column,
                error,
                ..
            } => Self::Parse {
                path: Some(file.to_owned()),
                line,
                column,
                error,
            },
            Self::Invalid { problems, .. } => Self::Invalid {
                path: Some(file.to_owned()),
                problems,
            },
            io @ Self::Io { .. } => io,
        }
    }
}

#[cfg(test)]
mod tests;
