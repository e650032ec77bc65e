//! The daemon as a SOCKS5 server for its clients: method choice, RFC 1929
//! check, the request, and the reply. Which reply code a failed backend maps
//! to is decided elsewhere; this module only puts it on the wire.

use std::net::{Ipv4Addr, SocketAddr};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    codec::{
        AuthRequest, AuthResponse, CodecError, Command, Credentials, Greeting, Method,
        MethodSelection, Reply, ReplyCode, Request, TargetAddr,
    },
    io::{ReadError, read_message},
};

/// Which clients the listener lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuth {
    /// Only "no authentication"; clients that offer nothing else are refused.
    NoAuth,
    /// Username/password when the client offers it (so it can be identified),
    /// otherwise no authentication.
    Optional(Vec<Credentials>),
    /// Username/password, checked against this list.
    Required(Vec<Credentials>),
}

impl ServerAuth {
    fn choose(&self, offered: &[Method]) -> Option<Method> {
        let offers = |m| offered.contains(&m);
        match self {
            Self::NoAuth => offers(Method::NoAuth).then_some(Method::NoAuth),
            Self::Optional(_) if offers(Method::UserPass) => Some(Method::UserPass),
            Self::Optional(_) => offers(Method::NoAuth).then_some(Method::NoAuth),
            Self::Required(_) => offers(Method::UserPass).then_some(Method::UserPass),
        }
    }

    fn admits(&self, given: &Credentials) -> bool {
        match self {
            Self::NoAuth => false,
            Self::Optional(list) | Self::Required(list) => list.iter().any(|c| c == given),
        }
    }
}

/// Why a client's handshake did not produce a request to serve.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Includes `UnexpectedEof` when the client closes mid-message.
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Garbage before the request (greeting or RFC 1929); nothing was replied.
    #[error("malformed client handshake: {0}")]
    Codec(#[from] CodecError),
    /// Garbage in the request; a reply carrying [`ServerError::reply_code`]
    /// was sent.
    #[error("malformed client request: {0}")]
    BadRequest(CodecError),
    /// `0xFF` was sent.
    #[error("client offers no acceptable method (offered {offered:?})")]
    NoAcceptableMethod { offered: Vec<Method> },
    /// An RFC 1929 failure status was sent.
    #[error("client authentication failed for user {username:?}")]
    AuthFailed { username: String },
    /// Reply `0x07` was sent.
    #[error("client asked for unsupported command {0:?}")]
    CommandNotSupported(Command),
}

impl ServerError {
    /// The reply this failure made [`accept`] send to the client, if it got
    /// as far as the request.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            Self::CommandNotSupported(_) => Some(ReplyCode::CommandNotSupported),
            Self::BadRequest(e) => Some(request_error_reply(e)),
            Self::Io(_) | Self::Codec(_) | Self::NoAcceptableMethod { .. } => None,
            Self::AuthFailed { .. } => None,
        }
    }
}

impl From<ReadError> for ServerError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Io(e) => Self::Io(e),
            ReadError::Codec(e) => Self::Codec(e),
        }
    }
}

fn request_error_reply(error: &CodecError) -> ReplyCode {
    match error {
        CodecError::BadCommand(_) => ReplyCode::CommandNotSupported,
        CodecError::BadAddressType(_) => ReplyCode::AddressTypeNotSupported,
        _ => ReplyCode::GeneralFailure,
    }
}

/// Runs the server side of the handshake up to a CONNECT request, reading
/// exactly the handshake's bytes: whatever the client sent after its request
/// is still in `stream`. The caller answers with [`reply`].
pub async fn accept<S>(stream: &mut S, auth: &ServerAuth) -> Result<Request, ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    negotiate(stream, auth).await?;
    read_request(stream).await
}

/// The first half of [`accept`]: method selection and, when chosen, the
/// RFC 1929 check. Once it returns the client has shown it speaks SOCKS5
/// and is admitted, and its request is the next thing on the wire; the
/// daemon uses that round trip to open a backend connection.
pub async fn negotiate<S>(stream: &mut S, auth: &ServerAuth) -> Result<(), ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let greeting: Greeting = read_message(stream, Greeting::decode).await?;
    let Some(method) = auth.choose(&greeting.methods) else {
        write_msg(stream, |out| {
            MethodSelection {
                method: Method::NoAcceptable,
            }
            .encode(out)
        })
        .await?;
        return Err(ServerError::NoAcceptableMethod {
            offered: greeting.methods,
        });
    };
    write_msg(stream, |out| MethodSelection { method }.encode(out)).await?;

    if method == Method::UserPass {
        let AuthRequest { credentials } = read_message(stream, AuthRequest::decode).await?;
        let ok = auth.admits(&credentials);
        let response = if ok {
            AuthResponse::success()
        } else {
            AuthResponse::failure()
        };
        write_msg(stream, |out| response.encode(out)).await?;
        if !ok {
            return Err(ServerError::AuthFailed {
                username: credentials.username,
            });
        }
    }
    Ok(())
}

/// The second half of [`accept`]: the request, which must be a CONNECT.
/// A malformed or unsupported request is answered with its failure reply.
pub async fn read_request<S>(stream: &mut S) -> Result<Request, ServerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = match read_message(stream, Request::decode).await {
        Ok(request) => request,
        Err(ReadError::Codec(e)) => {
            let code = request_error_reply(&e);
            reply_after_failure(stream, code).await;
            return Err(ServerError::BadRequest(e));
        }
        Err(ReadError::Io(e)) => return Err(ServerError::Io(e)),
    };
    if request.command != Command::Connect {
        reply_after_failure(stream, ReplyCode::CommandNotSupported).await;
        return Err(ServerError::CommandNotSupported(request.command));
    }
    Ok(request)
}

/// Sends the reply to a request in one write. `bound` is what the reply
/// reports as `BND.ADDR`/`BND.PORT`; a domain longer than 255 bytes, which
/// the encoding cannot carry, is an `InvalidInput` error.
pub async fn reply<S>(stream: &mut S, code: ReplyCode, bound: TargetAddr) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(22);
    let msg = Reply { code, bound };
    msg.encode(&mut out)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    stream.write_all(&out).await?;
    stream.flush().await
}

/// The failure already being returned matters more than whether the client
/// was still there to read its reply.
async fn reply_after_failure<S>(stream: &mut S, code: ReplyCode)
where
    S: AsyncWrite + Unpin,
{
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    if let Err(e) = reply(stream, code, unspecified.into()).await {
        tracing::debug!(error = %e, ?code, "could not send failure reply to client");
    }
}

async fn write_msg<S>(stream: &mut S, encode: impl FnOnce(&mut Vec<u8>)) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(2);
    encode(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
