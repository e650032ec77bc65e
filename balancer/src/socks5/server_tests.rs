use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;
use crate::socks5::codec::TargetAddr;

const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
const CONNECT_LOCALHOST_80: [u8; 10] = [5, 1, 0, 1, 127, 0, 0, 1, 0, 80];

fn creds() -> Vec<Credentials> {
    vec![Credentials::new("alice", "secret")]
}

fn auth_request(user: &str, pass: &str) -> Vec<u8> {
    let mut out = Vec::new();
    AuthRequest {
        credentials: Credentials::new(user, pass),
    }
    .encode(&mut out)
    .expect("short credentials encode");
    out
}

async fn read_n(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).await.expect("peer sent enough");
    buf
}

/// Everything the server wrote, once it has closed its side.
async fn rest(mut stream: DuplexStream) -> Vec<u8> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read to end");
    buf
}

/// A server stream whose client already sent `bytes` (and closed its side).
async fn client_sent(bytes: &[u8]) -> (DuplexStream, DuplexStream) {
    let (mut client, server) = duplex(4096);
    client.write_all(bytes).await.expect("write to duplex");
    client.shutdown().await.expect("shutdown duplex");
    (client, server)
}

#[tokio::test]
async fn pipelined_handshake_leaves_the_payload_after_the_request_unread() {
    let mut sent = vec![5, 1, 0];
    sent.extend_from_slice(&CONNECT_LOCALHOST_80);
    sent.extend_from_slice(PAYLOAD);
    let (client, mut server) = client_sent(&sent).await;

    let request = accept(&mut server, &ServerAuth::NoAuth)
        .await
        .expect("valid handshake");
    assert_eq!(request.command, Command::Connect);
    assert_eq!(
        request.target,
        TargetAddr::Ip(SocketAddr::from(([127, 0, 0, 1], 80)))
    );

    let mut unread = Vec::new();
    server.read_to_end(&mut unread).await.expect("read rest");
    assert_eq!(unread, PAYLOAD);
    drop(server);
    assert_eq!(rest(client).await, [5, 0]);
}

#[tokio::test]
async fn domain_request_with_payload_in_the_same_write_leaves_the_payload_unread() {
    let (mut client, mut server) = duplex(4096);
    let peer = tokio::spawn(async move {
        client.write_all(&[5, 1, 0]).await?;
        let mut selection = [0; 2];
        client.read_exact(&mut selection).await?;
        let mut rest = vec![5, 1, 0, 3, 11];
        rest.extend_from_slice(b"example.com");
        rest.extend_from_slice(&443u16.to_be_bytes());
        rest.extend_from_slice(PAYLOAD);
        client.write_all(&rest).await?;
        Ok::<_, io::Error>((client, selection))
    });

    let request = accept(&mut server, &ServerAuth::NoAuth)
        .await
        .expect("valid handshake");
    let (_client, selection) = peer.await.expect("join").expect("peer io");
    assert_eq!(selection, [5, 0]);
    assert_eq!(
        request.target,
        TargetAddr::Domain("example.com".into(), 443)
    );
    assert_eq!(read_n(&mut server, PAYLOAD.len()).await, PAYLOAD);
}

#[tokio::test]
async fn required_auth_admits_listed_credentials() {
    let mut sent = vec![5, 2, 0, 2];
    sent.extend(auth_request("alice", "secret"));
    sent.extend_from_slice(&CONNECT_LOCALHOST_80);
    sent.extend_from_slice(PAYLOAD);
    let (client, mut server) = client_sent(&sent).await;

    accept(&mut server, &ServerAuth::Required(creds()))
        .await
        .expect("listed credentials");
    assert_eq!(read_n(&mut server, PAYLOAD.len()).await, PAYLOAD);
    drop(server);
    assert_eq!(rest(client).await, [5, 2, 1, 0]);
}

#[tokio::test]
async fn required_auth_rejects_a_wrong_password_and_names_the_user() {
    let mut sent = vec![5, 1, 2];
    sent.extend(auth_request("alice", "wrong"));
    let (client, mut server) = client_sent(&sent).await;

    let err = accept(&mut server, &ServerAuth::Required(creds()))
        .await
        .expect_err("wrong password");
    assert!(
        matches!(&err, ServerError::AuthFailed { username } if username == "alice"),
        "{err:?}"
    );
    assert_eq!(err.reply_code(), None);
    drop(server);
    assert_eq!(rest(client).await, [5, 2, 1, 1]);
}

#[tokio::test]
async fn required_auth_refuses_a_client_that_offers_only_no_auth() {
    let (client, mut server) = client_sent(&[5, 1, 0]).await;
    let err = accept(&mut server, &ServerAuth::Required(creds()))
        .await
        .expect_err("no user/pass offered");
    assert!(
        matches!(&err, ServerError::NoAcceptableMethod { offered } if offered == &[Method::NoAuth]),
        "{err:?}"
    );
    drop(server);
    assert_eq!(rest(client).await, [5, 0xFF]);
}

#[tokio::test]
async fn no_auth_server_refuses_a_client_that_offers_only_user_pass() {
    let (client, mut server) = client_sent(&[5, 1, 2]).await;
    let err = accept(&mut server, &ServerAuth::NoAuth)
        .await
        .expect_err("only user/pass offered");
    assert!(
        matches!(err, ServerError::NoAcceptableMethod { .. }),
        "{err:?}"
    );
    drop(server);
    assert_eq!(rest(client).await, [5, 0xFF]);
}

#[tokio::test]
async fn optional_auth_uses_user_pass_when_offered_and_no_auth_otherwise() {
    let mut with_auth = vec![5, 2, 0, 2];
    with_auth.extend(auth_request("alice", "secret"));
    with_auth.extend_from_slice(&CONNECT_LOCALHOST_80);
    let (client, mut server) = client_sent(&with_auth).await;
    accept(&mut server, &ServerAuth::Optional(creds()))
        .await
        .expect("listed credentials");
    drop(server);
    assert_eq!(rest(client).await, [5, 2, 1, 0]);

    let mut without = vec![5, 1, 0];
    without.extend_from_slice(&CONNECT_LOCALHOST_80);
    let (client, mut server) = client_sent(&without).await;
    accept(&mut server, &ServerAuth::Optional(creds()))
        .await
        .expect("no auth is allowed");
    drop(server);
    assert_eq!(rest(client).await, [5, 0]);
}

#[tokio::test]
async fn bind_and_udp_associate_are_answered_with_command_not_supported() {
    for (cmd, command) in [(2, Command::Bind), (3, Command::UdpAssociate)] {
        let (client, mut server) = client_sent(&[5, 1, 0, 5, cmd, 0, 1, 10, 0, 0, 1, 0, 53]).await;
        let err = accept(&mut server, &ServerAuth::NoAuth)
            .await
            .expect_err("unsupported command");
        assert!(
            matches!(err, ServerError::CommandNotSupported(c) if c == command),
            "{err:?}"
        );
        assert_eq!(err.reply_code(), Some(ReplyCode::CommandNotSupported));
        drop(server);
        assert_eq!(rest(client).await, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    }
}

#[tokio::test]
async fn unknown_command_byte_is_answered_with_command_not_supported() {
    let (client, mut server) = client_sent(&[5, 1, 0, 5, 9, 0, 1]).await;
    let err = accept(&mut server, &ServerAuth::NoAuth)
        .await
        .expect_err("unknown command");
    assert!(
        matches!(err, ServerError::BadRequest(CodecError::BadCommand(9))),
        "{err:?}"
    );
    assert_eq!(err.reply_code(), Some(ReplyCode::CommandNotSupported));
    drop(server);
    assert_eq!(rest(client).await, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn unknown_address_type_is_answered_with_address_type_not_supported() {
    let (client, mut server) = client_sent(&[5, 1, 0, 5, 1, 0, 7, 1, 2, 3]).await;
    let err = accept(&mut server, &ServerAuth::NoAuth)
        .await
        .expect_err("bad atyp");
    assert!(
        matches!(err, ServerError::BadRequest(CodecError::BadAddressType(7))),
        "{err:?}"
    );
    assert_eq!(err.reply_code(), Some(ReplyCode::AddressTypeNotSupported));
    drop(server);
    assert_eq!(rest(client).await, [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn socks4_greeting_is_bad_version_and_gets_no_answer() {
    let (client, mut server) = client_sent(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).await;
    let err = accept(&mut server, &ServerAuth::NoAuth)
        .await
        .expect_err("socks4");
    assert!(
        matches!(err, ServerError::Codec(CodecError::BadVersion(4))),
        "{err:?}"
    );
    assert_eq!(err.reply_code(), None);
    drop(server);
    assert_eq!(rest(client).await, [0u8; 0]);
}

#[tokio::test]
async fn client_closing_at_any_point_of_the_handshake_is_unexpected_eof() {
    let mut full = vec![5, 1, 2];
    full.extend(auth_request("alice", "secret"));
    full.extend_from_slice(&CONNECT_LOCALHOST_80);
    for cut in 0..full.len() {
        let (_client, mut server) = client_sent(&full[..cut]).await;
        let err = accept(&mut server, &ServerAuth::Required(creds()))
            .await
            .expect_err("truncated handshake");
        assert!(
            matches!(&err, ServerError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "cut at {cut}: {err:?}"
        );
    }
}

/// Records each `poll_write` call separately.
#[derive(Default)]
struct WriteLog(Vec<Vec<u8>>);

impl tokio::io::AsyncWrite for WriteLog {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn reply_is_written_in_one_write() {
    let mut log = WriteLog::default();
    let bound = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 1080));
    reply(&mut log, ReplyCode::Succeeded, bound.into())
        .await
        .expect("write to log");
    assert_eq!(log.0, [vec![5, 0, 0, 1, 192, 0, 2, 7, 0x04, 0x38]]);

    let mut log = WriteLog::default();
    let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("literal");
    reply(&mut log, ReplyCode::HostUnreachable, v6.into())
        .await
        .expect("write to log");
    assert_eq!(log.0.len(), 1);
    assert_eq!(&log.0[0][..4], [5, 4, 0, 4]);
    assert_eq!(log.0[0].len(), 22);
}

#[tokio::test]
async fn a_reply_passes_on_a_bound_domain_and_refuses_one_too_long_to_encode() {
    // A backend may report its bound address as a name; the client's reply
    // carries it as given.
    let mut log = WriteLog::default();
    let bound = TargetAddr::Domain("egress.test".to_owned(), 1080);
    reply(&mut log, ReplyCode::Succeeded, bound)
        .await
        .expect("write to log");
    let mut expected = vec![5, 0, 0, 3, 11];
    expected.extend_from_slice(b"egress.test");
    expected.extend_from_slice(&[0x04, 0x38]);
    assert_eq!(log.0, [expected]);

    let mut log = WriteLog::default();
    let error = reply(
        &mut log,
        ReplyCode::Succeeded,
        TargetAddr::Domain("a".repeat(256), 1),
    )
    .await
    .expect_err("256 bytes do not fit the length octet");
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(log.0.is_empty(), "nothing written: {:?}", log.0);
}

#[tokio::test]
async fn negotiate_answers_the_greeting_and_leaves_the_request_for_read_request() {
    let mut sent = vec![5, 1, 0];
    sent.extend_from_slice(&CONNECT_LOCALHOST_80);
    sent.extend_from_slice(PAYLOAD);
    let (mut client, mut server) = client_sent(&sent).await;
    negotiate(&mut server, &ServerAuth::NoAuth)
        .await
        .expect("negotiated");
    assert_eq!(read_n(&mut client, 2).await, [5, 0]);
    let request = read_request(&mut server).await.expect("request");
    assert_eq!(
        request.target,
        TargetAddr::Ip(SocketAddr::from((Ipv4Addr::LOCALHOST, 80)))
    );
    assert_eq!(read_n(&mut server, PAYLOAD.len()).await, PAYLOAD);
}
