//! The daemon as a SOCKS5 client of a backend: greeting, optional RFC 1929
//! authentication, CONNECT, and the backend's reply read exactly, so that
//! whatever the target sends first (a banner) stays in the socket for the
//! forwarding engine. Timeouts and failover belong to the caller.

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    codec::{
        AuthRequest, AuthResponse, CodecError, Command, Credentials, Greeting, Method,
        MethodSelection, Reply, ReplyCode, Request, TargetAddr,
    },
    io::{ReadError, read_message},
};

/// Why a backend handshake failed. Each variant is one thing the backend
/// did, so callers classify failures by matching, never by message.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket failed: `UnexpectedEof` when the backend closed
    /// mid-handshake, `ConnectionReset` when it reset (see [`Self::io_kind`]).
    #[error("backend I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The backend answered bytes that are not SOCKS5 (or the target could
    /// not be encoded, e.g. a domain over 255 bytes).
    #[error("backend sent malformed SOCKS5: {0}")]
    Codec(#[from] CodecError),
    /// The backend accepts none of the offered methods (`0xFF`).
    #[error("backend accepts none of the offered methods")]
    NoAcceptableMethod,
    /// The backend picked a method that was not offered.
    #[error("backend chose method {0:?}, which was not offered")]
    UnexpectedMethod(Method),
    /// RFC 1929 failure status.
    #[error("backend rejected the credentials (status {status:#04x})")]
    AuthRejected { status: u8 },
    /// The backend's reply to CONNECT was not "succeeded".
    #[error("backend replied {0:?}")]
    Reply(ReplyCode),
}

impl From<ReadError> for ClientError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Io(e) => Self::Io(e),
            ReadError::Codec(e) => Self::Codec(e),
        }
    }
}

impl ClientError {
    /// The I/O error kind, so callers can tell EOF from reset from refusal.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Io(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The backend's failure reply code, if it sent one.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::Reply(code) => Some(*code),
            _ => None,
        }
    }

    /// Whether the backend refused us as a user (no method, bad credentials)
    /// rather than failing to reach the target.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::NoAcceptableMethod | Self::AuthRejected { .. } | Self::UnexpectedMethod(_)
        )
    }
}

/// Asks the backend on `stream` to CONNECT to `target` and returns the
/// address it reports as bound (`BND.ADDR`/`BND.PORT`, a domain if the
/// backend says so): [`greet`], then [`request`]. An unencodable target
/// fails before a byte is sent.
pub async fn connect<S>(
    stream: &mut S,
    target: &TargetAddr,
    credentials: Option<&Credentials>,
) -> Result<TargetAddr, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = encode_request(target)?;
    greet(stream, credentials).await?;
    send_request(stream, &request).await
}

/// Method selection and, when the backend picks it, RFC 1929
/// authentication. Offers username/password only when `credentials` is
/// given. Needs no target, so the daemon runs it while its own client is
/// still sending the request.
pub async fn greet<S>(stream: &mut S, credentials: Option<&Credentials>) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Encode everything up front so an unencodable credential fails before
    // a byte is sent.
    let methods = match credentials {
        Some(_) => vec![Method::NoAuth, Method::UserPass],
        None => vec![Method::NoAuth],
    };
    let mut greeting = Vec::with_capacity(4);
    Greeting { methods }.encode(&mut greeting)?;
    let mut auth = Vec::new();
    if let Some(credentials) = credentials {
        AuthRequest {
            credentials: credentials.clone(),
        }
        .encode(&mut auth)?;
    }

    send(stream, &greeting).await?;
    let MethodSelection { method } = read_message(stream, MethodSelection::decode).await?;
    match (method, credentials) {
        (Method::NoAuth, _) => Ok(()),
        (Method::UserPass, Some(_)) => {
            send(stream, &auth).await?;
            let response: AuthResponse = read_message(stream, AuthResponse::decode).await?;
            if response.is_success() {
                Ok(())
            } else {
                Err(ClientError::AuthRejected {
                    status: response.status,
                })
            }
        }
        (Method::NoAcceptable, _) => Err(ClientError::NoAcceptableMethod),
        (other, _) => Err(ClientError::UnexpectedMethod(other)),
    }
}

/// The CONNECT on a greeted `stream`, and the backend's reply read exactly,
/// so that whatever the target sends first stays in the socket.
pub async fn request<S>(stream: &mut S, target: &TargetAddr) -> Result<TargetAddr, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = encode_request(target)?;
    send_request(stream, &request).await
}

fn encode_request(target: &TargetAddr) -> Result<Vec<u8>, ClientError> {
    let mut request = Vec::with_capacity(22);
    Request {
        command: Command::Connect,
        target: target.clone(),
    }
    .encode(&mut request)?;
    Ok(request)
}

async fn send_request<S>(stream: &mut S, request: &[u8]) -> Result<TargetAddr, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send(stream, request).await?;
    let reply: Reply = read_message(stream, Reply::decode).await?;
    match reply.code {
        ReplyCode::Succeeded => Ok(reply.bound),
        code => Err(ClientError::Reply(code)),
    }
}

async fn send<S>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(bytes).await?;
    stream.flush().await
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
