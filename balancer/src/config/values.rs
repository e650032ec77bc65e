//! Value newtypes of the config file that validate while they are
//! deserialised, so that serde_yaml reports a bad value with its key path,
//! line and column: [`BackendAddress`] (with port ranges), [`HostPort`],
//! [`Host`], [`DurationValue`] and the masked [`Secret`].

use std::{
    fmt,
    marker::PhantomData,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer, de};

/// Largest number of ports one `address: "host:a-b"` may expand to.
pub const MAX_PORT_RANGE: usize = 10_000;

/// Why an address, duration or name in the file is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}` has no port: write host:port, [v6]:port or host:first-last")]
    MissingPort(String),
    #[error("`{0}` is not a port (1-65535)")]
    BadPort(String),
    #[error("port range {start}-{end} is reversed: the first port must not exceed the last")]
    ReversedRange { start: u16, end: u16 },
    #[error("port range {start}-{end} has {len} ports, more than the limit of {MAX_PORT_RANGE}")]
    RangeTooLarge { start: u16, end: u16, len: usize },
    #[error("`{0}` looks like an IPv6 address without brackets: write [{0}]:port")]
    UnbracketedIpv6(String),
    #[error("`{0}` is not a valid IPv6 address")]
    BadIpv6(String),
    #[error("`{0}` is not a valid host name")]
    BadHostName(String),
    #[error(
        "`{0}` is not a duration: write a number and a unit (ms, s, m, h), e.g. 500ms, 10s, 1m30s"
    )]
    BadDuration(String),
    #[error("port ranges are not allowed here: `{0}` must name a single port")]
    UnexpectedRange(String),
}

/// Parses a scalar with `FromStr` inside the scalar's own deserialisation,
/// so that serde_yaml's error carries the scalar's key path and position
/// (a `try_from` conversion would run after it and point at the parent).
struct ParseVisitor<T> {
    expecting: &'static str,
    marker: PhantomData<T>,
}

impl<T: FromStr<Err = ValueError>> de::Visitor<'_> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
}

macro_rules! deserialize_from_str {
    ($type:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(ParseVisitor {
                    expecting: $expecting,
                    marker: PhantomData,
                })
            }
        }
    };
}

deserialize_from_str!(BackendAddress, "host:port, [v6]:port or host:first-last");
deserialize_from_str!(HostPort, "host:port or [v6]:port");
deserialize_from_str!(DurationValue, "a duration such as 500ms, 10s, 10m");

/// The host part of an address: an IP literal or a host name that is kept
/// unresolved (resolution belongs to the connect path, so a name can follow
/// DNS changes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// The socket address for `port`, when the host is an IP literal.
    #[must_use]
    pub fn socket_addr(&self, port: u16) -> Option<SocketAddr> {
        match self {
            Self::Ip(ip) => Some(SocketAddr::new(*ip, port)),
            Self::Name(_) => None,
        }
    }

    fn parse(text: &str) -> Result<Self, ValueError> {
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Self::Ip(IpAddr::V6(ip)))
                .map_err(|_| ValueError::BadIpv6(inner.to_owned()));
        }
        if text.contains(':') {
            return Err(ValueError::UnbracketedIpv6(text.to_owned()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if is_host_name(text) {
            Ok(Self::Name(text.to_owned()))
        } else {
            Err(ValueError::BadHostName(text.to_owned()))
        }
    }
}

/// RFC 1123 labels, plus `_` which real DNS names (service records) carry.
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// Splits `host:port-part` at the last colon outside brackets.
fn split_host_port(text: &str) -> Result<(&str, &str), ValueError> {
    let colon = if text.starts_with('[') {
        let close = text
            .find(']')
            .ok_or_else(|| ValueError::BadIpv6(text.to_owned()))?;
        match text.get(close + 1..) {
            Some(rest) if rest.starts_with(':') => close + 1,
            _ => return Err(ValueError::MissingPort(text.to_owned())),
        }
    } else {
        text.rfind(':')
            .ok_or_else(|| ValueError::MissingPort(text.to_owned()))?
    };
    let (host, port) = (&text[..colon], &text[colon + 1..]);
    if !text.starts_with('[') && host.contains(':') {
        return Err(ValueError::UnbracketedIpv6(host.to_owned()));
    }
    Ok((host, port))
}

fn parse_port(text: &str) -> Result<u16, ValueError> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(ValueError::BadPort(text.to_owned())),
    }
}

/// A backend address: `host:port`, `[v6]:port`, or a port range
/// `host:first-last` that stands for one backend per port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendAddress {
    host: Host,
    first_port: u16,
    last_port: u16,
}

impl BackendAddress {
    #[must_use]
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The ports this address covers; a single port is a range of one.
    #[must_use]
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.first_port..=self.last_port
    }

    /// Whether the address was written as a range (even `a-a`), which decides
    /// how expanded backends are named.
    #[must_use]
    pub fn is_range(&self) -> bool {
        self.first_port != self.last_port
    }

    /// How many backends this address expands to.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.last_port - self.first_port) + 1
    }

    /// Never true: an address covers at least one port.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for BackendAddress {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, ports) = split_host_port(text.trim())?;
        let host = Host::parse(host)?;
        let (first_port, last_port) = match ports.split_once('-') {
            Some((a, b)) => (parse_port(a)?, parse_port(b)?),
            None => {
                let port = parse_port(ports)?;
                (port, port)
            }
        };
        if first_port > last_port {
            return Err(ValueError::ReversedRange {
                start: first_port,
                end: last_port,
            });
        }
        let len = usize::from(last_port - first_port) + 1;
        if len > MAX_PORT_RANGE {
            return Err(ValueError::RangeTooLarge {
                start: first_port,
                end: last_port,
                len,
            });
        }
        Ok(Self {
            host,
            first_port,
            last_port,
        })
    }
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_range() {
            write!(f, "{}:{}-{}", self.host, self.first_port, self.last_port)
        } else {
            write!(f, "{}:{}", self.host, self.first_port)
        }
    }
}

/// One `host:port` (no range), for targets such as the health probe's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, port) = split_host_port(text.trim())?;
        if port.contains('-') {
            return Err(ValueError::UnexpectedRange(text.to_owned()));
        }
        Ok(Self {
            host: Host::parse(host)?,
            port: parse_port(port)?,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A duration written with units: `500ms`, `10s`, `10m`, `1h`, `1m30s`, `0s`.
/// A bare number is refused: a unit-less `10` is ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationValue(pub Duration);

impl DurationValue {
    #[must_use]
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    #[must_use]
    pub const fn get(self) -> Duration {
        self.0
    }

    #[must_use]
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// `None` for zero, which the file uses to mean "off".
    #[must_use]
    pub fn non_zero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl FromStr for DurationValue {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ValueError::BadDuration(text.to_owned());
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = match &rest[..unit_len] {
                "ms" => Duration::from_millis(1),
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                "h" => Duration::from_secs(3600),
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            let part = u32::try_from(number)
                .ok()
                .and_then(|n| unit.checked_mul(n))
                .ok_or_else(bad)?;
            total = total.checked_add(part).ok_or_else(bad)?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if !millis.is_multiple_of(1000) {
            write!(f, "{millis}ms")
        } else if millis.is_multiple_of(3_600_000) && millis != 0 {
            write!(f, "{}h", millis / 3_600_000)
        } else if millis.is_multiple_of(60_000) && millis != 0 {
            write!(f, "{}m", millis / 60_000)
        } else {
            write!(f, "{}s", millis / 1000)
        }
    }
}

/// A password. `Debug` and `Display` print `***` so that logging a config,
/// a backend or an error can never leak it; [`Secret::expose`] is the one
/// deliberate way to read it (for the SOCKS5 handshake).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn addr(text: &str) -> Result<BackendAddress, ValueError> {
        text.parse()
    }

    #[test]
    fn ipv4_address_with_port_parses() {
        let a = addr("127.0.0.1:1081").expect("valid");
        assert_eq!(a.host(), &Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(a.ports(), 1081..=1081);
        assert!(!a.is_range());
    }

    #[test]
    fn bracketed_ipv6_address_parses_and_prints_with_brackets() {
        let a = addr("[::1]:1090").expect("valid");
        assert_eq!(a.host(), &Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(a.to_string(), "[::1]:1090");
    }

    #[test]
    fn port_range_covers_every_port_inclusive() {
        let a = addr("127.0.0.1:1081-1090").expect("valid");
        assert_eq!(a.len(), 10);
        assert_eq!(a.ports().collect::<Vec<_>>().len(), 10);
        assert_eq!(a.to_string(), "127.0.0.1:1081-1090");
    }

    #[test]
    fn host_names_are_kept_unresolved() {
        let a = addr("proxy-1.example.net:1080").expect("valid");
        assert_eq!(a.host(), &Host::Name("proxy-1.example.net".into()));
        assert_eq!(a.host().socket_addr(1080), None);
    }

    #[test]
    fn reversed_port_range_is_refused() {
        assert_eq!(
            addr("10.0.0.1:2000-1000"),
            Err(ValueError::ReversedRange {
                start: 2000,
                end: 1000
            })
        );
    }

    #[test]
    fn range_of_more_than_ten_thousand_ports_is_refused() {
        assert!(addr("10.0.0.1:1000-10999").is_ok());
        assert!(matches!(
            addr("10.0.0.1:1000-11000"),
            Err(ValueError::RangeTooLarge { len: 10_001, .. })
        ));
    }

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        assert!(matches!(addr("127.0.0.1"), Err(ValueError::MissingPort(_))));
        assert!(matches!(addr("127.0.0.1:0"), Err(ValueError::BadPort(_))));
        assert!(matches!(
            addr("127.0.0.1:70000"),
            Err(ValueError::BadPort(_))
        ));
        assert!(matches!(addr("127.0.0.1:+80"), Err(ValueError::BadPort(_))));
        assert!(matches!(
            addr("::1:80"),
            Err(ValueError::UnbracketedIpv6(_))
        ));
        assert!(matches!(addr("[::g]:80"), Err(ValueError::BadIpv6(_))));
        assert!(matches!(addr("[::1]80"), Err(ValueError::MissingPort(_))));
        assert!(matches!(
            addr("bad host:80"),
            Err(ValueError::BadHostName(_))
        ));
        assert!(matches!(addr(":80"), Err(ValueError::BadHostName(_))));
    }

    #[test]
    fn host_port_refuses_a_range() {
        assert!(matches!(
            "example.com:80-81".parse::<HostPort>(),
            Err(ValueError::UnexpectedRange(_))
        ));
        let hp: HostPort = "example.com:80".parse().expect("valid");
        assert_eq!(hp.to_string(), "example.com:80");
    }

    #[test]
    fn durations_accept_each_unit_and_sums() {
        let d = |t: &str| t.parse::<DurationValue>().map(DurationValue::get);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(d("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(d("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_without_unit_or_with_unknown_unit_are_refused() {
        for bad in [
            "10",
            "",
            "s",
            "10 s",
            "10sec",
            "-1s",
            "1.5s",
            "99999999999h",
        ] {
            assert!(
                bad.parse::<DurationValue>().is_err(),
                "`{bad}` should be refused"
            );
        }
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        let show = |t: &str| t.parse::<DurationValue>().map(|d| d.to_string());
        assert_eq!(show("1500ms").as_deref(), Ok("1500ms"));
        assert_eq!(show("600s").as_deref(), Ok("10m"));
        assert_eq!(show("60m").as_deref(), Ok("1h"));
        assert_eq!(show("0s").as_deref(), Ok("0s"));
    }

    #[test]
    fn secret_is_masked_in_debug_and_display() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }
}
