//! The one read loop both drivers share: ask the decoder how many bytes it
//! needs, `read_exact` exactly that many, repeat. Nothing past the message's
//! last byte is ever taken from the stream.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::codec::{CodecError, Decoded};

/// Longest message either side reads: an RFC 1929 request
/// (`1 + 1 + 255 + 1 + 255`).
const MAX_MESSAGE: usize = 513;

/// What went wrong reading one message; each driver maps it into its own
/// error type.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(std::io::Error),
    Codec(CodecError),
}

/// Reads one message with as many exact reads as the decoder asks for.
pub(crate) async fn read_message<S, T>(
    stream: &mut S,
    decode: fn(&[u8]) -> Result<Decoded<T>, CodecError>,
) -> Result<T, ReadError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(MAX_MESSAGE);
    loop {
        match decode(&buf).map_err(ReadError::Codec)? {
            Decoded::Done(msg, consumed) => {
                debug_assert_eq!(
                    consumed,
                    buf.len(),
                    "decoder asked for bytes it did not use"
                );
                return Ok(msg);
            }
            Decoded::NeedMore(n) => {
                let start = buf.len();
                buf.resize(start + n, 0);
                stream
                    .read_exact(&mut buf[start..])
                    .await
                    .map_err(ReadError::Io)?;
            }
        }
    }
}
