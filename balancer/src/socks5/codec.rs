//! The SOCKS5 wire format (RFC 1928) and its username/password
//! sub-negotiation (RFC 1929), without I/O.
//!
//! Every decoder takes the bytes read so far and answers either
//! [`Decoded::NeedMore`] with a lower bound on the bytes still missing (exact
//! as soon as the length is known), or [`Decoded::Done`] with the message and
//! how many bytes it took. A driver that reads exactly the `NeedMore` count
//! each time ends on the message's last byte and never reads past it: the
//! property `super::io` relies on and the tests below check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// `VER` of every RFC 1928 message.
pub const VERSION: u8 = 0x05;
/// `VER` of the RFC 1929 sub-negotiation.
pub const AUTH_VERSION: u8 = 0x01;
/// RFC 1929 `STATUS` for success; any other value is a failure.
pub const AUTH_SUCCESS: u8 = 0x00;
/// The RFC 1929 `STATUS` this crate sends on failure.
pub const AUTH_FAILURE: u8 = 0x01;

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// Why bytes are not a valid SOCKS5 message, or a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("SOCKS version {0:#04x}, expected 0x05")]
    BadVersion(u8),
    #[error("username/password sub-negotiation version {0:#04x}, expected 0x01")]
    BadAuthVersion(u8),
    #[error("greeting offers no authentication method")]
    NoMethods,
    #[error("greeting offers {0} methods, at most 255 fit")]
    TooManyMethods(usize),
    #[error("unknown command {0:#04x}")]
    BadCommand(u8),
    #[error("unknown address type {0:#04x}")]
    BadAddressType(u8),
    #[error("domain name is empty")]
    EmptyDomain,
    #[error("domain name is {0} bytes, at most 255 fit")]
    DomainTooLong(usize),
    #[error("domain name is not UTF-8")]
    NonUtf8Domain,
    #[error("username is {0} bytes, at most 255 fit")]
    UsernameTooLong(usize),
    #[error("password is {0} bytes, at most 255 fit")]
    PasswordTooLong(usize),
    #[error("username or password is not UTF-8")]
    NonUtf8Credentials,
}

/// Result of feeding a decoder the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// At least this many more bytes are needed (never 0, never more than the
    /// message still lacks).
    NeedMore(usize),
    /// The message, and how many bytes of the input it took.
    Done(T, usize),
}

/// Where a client wants to go, or where a server says it is bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    Ip(SocketAddr),
    /// A name of 1..=255 bytes, passed on unresolved, and a port.
    Domain(String, u16),
}

impl TargetAddr {
    /// The port, whatever the address kind.
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(addr) => addr.port(),
            Self::Domain(_, port) => *port,
        }
    }

    /// The socket address if this is an IP address.
    pub fn as_socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Ip(addr) => Some(*addr),
            Self::Domain(..) => None,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            Self::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
            Self::Domain(name, _) => 1 + 1 + name.len() + 2,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Self::Ip(SocketAddr::V4(addr)) => {
                out.push(ATYP_IPV4);
                out.extend_from_slice(&addr.ip().octets());
            }
            Self::Ip(SocketAddr::V6(addr)) => {
                out.push(ATYP_IPV6);
                out.extend_from_slice(&addr.ip().octets());
            }
            Self::Domain(name, _) => {
                let len =
                    u8::try_from(name.len()).map_err(|_| CodecError::DomainTooLong(name.len()))?;
                if len == 0 {
                    return Err(CodecError::EmptyDomain);
                }
                out.push(ATYP_DOMAIN);
                out.push(len);
                out.extend_from_slice(name.as_bytes());
            }
        }
        out.extend_from_slice(&self.port().to_be_bytes());
        Ok(())
    }

    /// Decodes `ATYP ADDR PORT` from the start of `buf`.
    fn decode(buf: &[u8]) -> Result<Decoded<Self>, CodecError> {
        let Some(&atyp) = buf.first() else {
            return Ok(Decoded::NeedMore(1));
        };
        let (addr_start, addr_len) = match atyp {
            ATYP_IPV4 => (1, 4),
            ATYP_IPV6 => (1, 16),
            ATYP_DOMAIN => match buf.get(1) {
                None => return Ok(Decoded::NeedMore(1)),
                Some(0) => return Err(CodecError::EmptyDomain),
                Some(&len) => (2, usize::from(len)),
            },
            other => return Err(CodecError::BadAddressType(other)),
        };
        let total = addr_start + addr_len + 2;
        let Some(body) = buf.get(addr_start..total) else {
            return Ok(Decoded::NeedMore(total - buf.len()));
        };
        let (addr, port) = body.split_at(addr_len);
        let port = u16::from_be_bytes([port[0], port[1]]);
        let target = match atyp {
            ATYP_IPV4 => {
                let octets: [u8; 4] = addr.try_into().unwrap_or_default();
                Self::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port))
            }
            ATYP_IPV6 => {
                let octets: [u8; 16] = addr.try_into().unwrap_or_default();
                Self::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
            }
            _ => {
                let name = std::str::from_utf8(addr).map_err(|_| CodecError::NonUtf8Domain)?;
                Self::Domain(name.to_owned(), port)
            }
        };
        Ok(Decoded::Done(target, total))
    }
}

impl From<SocketAddr> for TargetAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::Ip(addr)
    }
}

/// An authentication method (`METHOD` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    NoAuth,
    UserPass,
    /// Any other method (GSSAPI, private ones); never chosen by this crate.
    Other(u8),
    /// `0xFF`: the server accepts none of the offered methods.
    NoAcceptable,
}

impl From<u8> for Method {
    fn from(byte: u8) -> Self {
        match byte {
            0x00 => Self::NoAuth,
            0x02 => Self::UserPass,
            0xFF => Self::NoAcceptable,
            other => Self::Other(other),
        }
    }
}

impl From<Method> for u8 {
    fn from(method: Method) -> Self {
        match method {
            Method::NoAuth => 0x00,
            Method::UserPass => 0x02,
            Method::NoAcceptable => 0xFF,
            Method::Other(byte) => byte,
        }
    }
}

/// A request's `CMD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
}

impl TryFrom<u8> for Command {
    type Error = CodecError;

    fn try_from(byte: u8) -> Result<Self, CodecError> {
        match byte {
            0x01 => Ok(Self::Connect),
            0x02 => Ok(Self::Bind),
            0x03 => Ok(Self::UdpAssociate),
            other => Err(CodecError::BadCommand(other)),
        }
    }
}

impl From<Command> for u8 {
    fn from(command: Command) -> Self {
        match command {
            Command::Connect => 0x01,
            Command::Bind => 0x02,
            Command::UdpAssociate => 0x03,
        }
    }
}

/// A reply's `REP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    Succeeded,
    GeneralFailure,
    NotAllowed,
    NetworkUnreachable,
    HostUnreachable,
    ConnectionRefused,
    TtlExpired,
    CommandNotSupported,
    AddressTypeNotSupported,
    /// Unassigned by RFC 1928 (`0x09..=0xFF`).
    Other(u8),
}

impl From<u8> for ReplyCode {
    fn from(byte: u8) -> Self {
        match byte {
            0x00 => Self::Succeeded,
            0x01 => Self::GeneralFailure,
            0x02 => Self::NotAllowed,
            0x03 => Self::NetworkUnreachable,
            0x04 => Self::HostUnreachable,
            0x05 => Self::ConnectionRefused,
            0x06 => Self::TtlExpired,
            0x07 => Self::CommandNotSupported,
            0x08 => Self::AddressTypeNotSupported,
            other => Self::Other(other),
        }
    }
}

impl From<ReplyCode> for u8 {
    fn from(code: ReplyCode) -> Self {
        match code {
            ReplyCode::Succeeded => 0x00,
            ReplyCode::GeneralFailure => 0x01,
            ReplyCode::NotAllowed => 0x02,
            ReplyCode::NetworkUnreachable => 0x03,
            ReplyCode::HostUnreachable => 0x04,
            ReplyCode::ConnectionRefused => 0x05,
            ReplyCode::TtlExpired => 0x06,
            ReplyCode::CommandNotSupported => 0x07,
            ReplyCode::AddressTypeNotSupported => 0x08,
            ReplyCode::Other(byte) => byte,
        }
    }
}

/// A password whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// RFC 1929 username and password.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub username: String,
    pub password: Password,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Password(password.into()),
        }
    }
}

/// Client's first message: the methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub methods: Vec<Method>,
}

impl Greeting {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let n = u8::try_from(self.methods.len())
            .map_err(|_| CodecError::TooManyMethods(self.methods.len()))?;
        if n == 0 {
            return Err(CodecError::NoMethods);
        }
        out.reserve(2 + self.methods.len());
        out.extend_from_slice(&[VERSION, n]);
        out.extend(self.methods.iter().map(|&m| u8::from(m)));
        Ok(())
    }

    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, CodecError> {
        check_version(buf, VERSION, CodecError::BadVersion)?;
        let Some(&n) = buf.get(1) else {
            return Ok(Decoded::NeedMore(2 - buf.len()));
        };
        if n == 0 {
            return Err(CodecError::NoMethods);
        }
        let total = 2 + usize::from(n);
        let Some(methods) = buf.get(2..total) else {
            return Ok(Decoded::NeedMore(total - buf.len()));
        };
        let methods = methods.iter().map(|&b| Method::from(b)).collect();
        Ok(Decoded::Done(Self { methods }, total))
    }
}

/// Server's answer to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSelection {
    pub method: Method,
}

impl MethodSelection {
    pub const LEN: usize = 2;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[VERSION, self.method.into()]);
    }

    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, CodecError> {
        check_version(buf, VERSION, CodecError::BadVersion)?;
        match buf.get(1) {
            None => Ok(Decoded::NeedMore(Self::LEN - buf.len())),
            Some(&method) => Ok(Decoded::Done(
                Self {
                    method: method.into(),
                },
                Self::LEN,
            )),
        }
    }
}

/// RFC 1929 client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    pub credentials: Credentials,
}

impl AuthRequest {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let user = self.credentials.username.as_bytes();
        let pass = self.credentials.password.0.as_bytes();
        let ulen = u8::try_from(user.len()).map_err(|_| CodecError::UsernameTooLong(user.len()))?;
        let plen = u8::try_from(pass.len()).map_err(|_| CodecError::PasswordTooLong(pass.len()))?;
        out.reserve(3 + user.len() + pass.len());
        out.extend_from_slice(&[AUTH_VERSION, ulen]);
        out.extend_from_slice(user);
        out.push(plen);
        out.extend_from_slice(pass);
        Ok(())
    }

    /// Accepts empty usernames and passwords although RFC 1929 asks for at
    /// least one byte: rejecting them would only turn a clean "auth failed"
    /// into a protocol error.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, CodecError> {
        check_version(buf, AUTH_VERSION, CodecError::BadAuthVersion)?;
        let Some(&ulen) = buf.get(1) else {
            return Ok(Decoded::NeedMore(2 - buf.len()));
        };
        let plen_at = 2 + usize::from(ulen);
        let Some(&plen) = buf.get(plen_at) else {
            return Ok(Decoded::NeedMore(plen_at + 1 - buf.len()));
        };
        let total = plen_at + 1 + usize::from(plen);
        if buf.len() < total {
            return Ok(Decoded::NeedMore(total - buf.len()));
        }
        let utf8 = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| CodecError::NonUtf8Credentials)
        };
        let credentials = Credentials {
            username: utf8(&buf[2..plen_at])?,
            password: Password(utf8(&buf[plen_at + 1..total])?),
        };
        Ok(Decoded::Done(Self { credentials }, total))
    }
}

/// RFC 1929 server answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthResponse {
    pub status: u8,
}

impl AuthResponse {
    pub const LEN: usize = 2;

    pub fn success() -> Self {
        Self {
            status: AUTH_SUCCESS,
        }
    }

    pub fn failure() -> Self {
        Self {
            status: AUTH_FAILURE,
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == AUTH_SUCCESS
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[AUTH_VERSION, self.status]);
    }

    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, CodecError> {
        check_version(buf, AUTH_VERSION, CodecError::BadAuthVersion)?;
        match buf.get(1) {
            None => Ok(Decoded::NeedMore(Self::LEN - buf.len())),
            Some(&status) => Ok(Decoded::Done(Self { status }, Self::LEN)),
        }
    }
}

/// Client request: `VER CMD RSV ATYP DST.ADDR DST.PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub target: TargetAddr,
}

impl Request {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.reserve(3 + self.target.encoded_len());
        out.extend_from_slice(&[VERSION, self.command.into(), 0x00]);
        self.target.encode(out)
    }

    /// `RSV` is ignored rather than checked: RFC 1928 gives it no meaning.
    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, CodecError> {
        decode_header(buf, Command::try_from)?.map(|command, target| Self { command, target })
    }
}

/// Server reply: `VER REP RSV ATYP BND.ADDR BND.PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: ReplyCode,
    pub bound: TargetAddr,
}

impl Reply {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.reserve(3 + self.bound.encoded_len());
        out.extend_from_slice(&[VERSION, self.code.into(), 0x00]);
        self.bound.encode(out)
    }

    pub fn decode(buf: &[u8]) -> Result<Decoded<Self>, CodecError> {
        decode_header(buf, |byte| Ok(ReplyCode::from(byte)))?
            .map(|code, bound| Self { code, bound })
    }
}

/// A request or reply split into its second byte and its address.
enum Header<T> {
    NeedMore(usize),
    Done(T, TargetAddr, usize),
}

impl<T> Header<T> {
    fn map<M>(self, f: impl FnOnce(T, TargetAddr) -> M) -> Result<Decoded<M>, CodecError> {
        Ok(match self {
            Self::NeedMore(n) => Decoded::NeedMore(n),
            Self::Done(second, addr, consumed) => Decoded::Done(f(second, addr), consumed),
        })
    }
}

/// Shared shape of requests and replies: 3 fixed bytes, then an address.
/// Each byte is checked as soon as it is present, so garbage is reported
/// before the driver asks for more of it.
fn decode_header<T>(
    buf: &[u8],
    second: impl FnOnce(u8) -> Result<T, CodecError>,
) -> Result<Header<T>, CodecError> {
    const FIXED: usize = 3;
    check_version(buf, VERSION, CodecError::BadVersion)?;
    let Some(&byte) = buf.get(1) else {
        return Ok(Header::NeedMore(FIXED + 1 - buf.len()));
    };
    let second = second(byte)?;
    if buf.len() < FIXED + 1 {
        // ATYP is needed before the address length is known.
        return Ok(Header::NeedMore(FIXED + 1 - buf.len()));
    }
    Ok(match TargetAddr::decode(&buf[FIXED..])? {
        Decoded::NeedMore(n) => Header::NeedMore(n),
        Decoded::Done(addr, len) => Header::Done(second, addr, FIXED + len),
    })
}

fn check_version(buf: &[u8], expected: u8, error: fn(u8) -> CodecError) -> Result<(), CodecError> {
    match buf.first() {
        Some(&ver) if ver != expected => Err(error(ver)),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
