use std::{io, net::SocketAddr, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;

const BANNER: &[u8] = b"SSH-2.0-OpenSSH_9.9\r\n";

fn target() -> TargetAddr {
    TargetAddr::Domain("example.com".into(), 22)
}

fn target_bytes() -> Vec<u8> {
    let mut out = vec![5, 1, 0, 3, 11];
    out.extend_from_slice(b"example.com");
    out.extend_from_slice(&22u16.to_be_bytes());
    out
}

const REPLY_V4: [u8; 10] = [5, 0, 0, 1, 10, 1, 2, 3, 0x1F, 0x90];

/// A scripted backend: for each step, read exactly `expect` (asserting the
/// bytes) and then write `answer`; closes after the last step.
fn backend(
    mut stream: DuplexStream,
    steps: Vec<(Vec<u8>, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for (expect, answer) in steps {
            let mut got = vec![0; expect.len()];
            stream
                .read_exact(&mut got)
                .await
                .expect("client sent the step");
            assert_eq!(got, expect);
            stream.write_all(&answer).await.expect("write answer");
        }
    })
}

async fn run(
    steps: Vec<(Vec<u8>, Vec<u8>)>,
    creds: Option<&Credentials>,
) -> (Result<TargetAddr, ClientError>, DuplexStream) {
    let (mut ours, theirs) = duplex(4096);
    let peer = backend(theirs, steps);
    let result = connect(&mut ours, &target(), creds).await;
    peer.await.expect("backend script ran to its end");
    (result, ours)
}

#[tokio::test]
async fn no_auth_connect_returns_bound_address_and_leaves_the_banner_unread() {
    let mut reply_and_banner = REPLY_V4.to_vec();
    reply_and_banner.extend_from_slice(BANNER);
    let steps = vec![
        (vec![5, 1, 0], vec![5, 0]),
        (target_bytes(), reply_and_banner),
    ];
    let (result, mut ours) = run(steps, None).await;
    assert_eq!(
        result.expect("handshake succeeds"),
        TargetAddr::Ip(SocketAddr::from(([10, 1, 2, 3], 8080)))
    );
    let mut unread = Vec::new();
    ours.read_to_end(&mut unread).await.expect("read rest");
    assert_eq!(unread, BANNER);
}

#[tokio::test]
async fn user_pass_connect_authenticates_and_accepts_a_domain_bound_address() {
    let creds = Credentials::new("bob", "pw");
    let mut reply = vec![5, 0, 0, 3, 9];
    reply.extend_from_slice(b"proxy.lan");
    reply.extend_from_slice(&1080u16.to_be_bytes());
    reply.extend_from_slice(BANNER);
    let steps = vec![
        (vec![5, 2, 0, 2], vec![5, 2]),
        (vec![1, 3, b'b', b'o', b'b', 2, b'p', b'w'], vec![1, 0]),
        (target_bytes(), reply),
    ];
    let (result, mut ours) = run(steps, Some(&creds)).await;
    assert_eq!(
        result.expect("handshake succeeds"),
        TargetAddr::Domain("proxy.lan".into(), 1080)
    );
    let mut unread = Vec::new();
    ours.read_to_end(&mut unread).await.expect("read rest");
    assert_eq!(unread, BANNER);
}

#[tokio::test]
async fn backend_may_choose_no_auth_even_when_credentials_are_offered() {
    let creds = Credentials::new("bob", "pw");
    let steps = vec![
        (vec![5, 2, 0, 2], vec![5, 0]),
        (target_bytes(), REPLY_V4.to_vec()),
    ];
    let (result, _) = run(steps, Some(&creds)).await;
    result.expect("handshake succeeds");
}

#[tokio::test]
async fn rejected_credentials_are_auth_rejected_with_the_status() {
    let creds = Credentials::new("bob", "pw");
    let steps = vec![
        (vec![5, 2, 0, 2], vec![5, 2]),
        (vec![1, 3, b'b', b'o', b'b', 2, b'p', b'w'], vec![1, 0x7F]),
    ];
    let (result, _) = run(steps, Some(&creds)).await;
    let err = result.expect_err("auth rejected");
    assert!(
        matches!(err, ClientError::AuthRejected { status: 0x7F }),
        "{err:?}"
    );
    assert!(err.is_auth());
}

#[tokio::test]
async fn no_acceptable_method_is_its_own_error() {
    let (result, _) = run(vec![(vec![5, 1, 0], vec![5, 0xFF])], None).await;
    let err = result.expect_err("no method");
    assert!(matches!(err, ClientError::NoAcceptableMethod), "{err:?}");
}

#[tokio::test]
async fn a_method_that_was_not_offered_is_unexpected_method() {
    let (result, _) = run(vec![(vec![5, 1, 0], vec![5, 2])], None).await;
    let err = result.expect_err("user/pass not offered");
    assert!(
        matches!(err, ClientError::UnexpectedMethod(Method::UserPass)),
        "{err:?}"
    );

    let (result, _) = run(vec![(vec![5, 1, 0], vec![5, 1])], None).await;
    let err = result.expect_err("gssapi not offered");
    assert!(
        matches!(err, ClientError::UnexpectedMethod(Method::Other(1))),
        "{err:?}"
    );
}

#[tokio::test]
async fn failure_reply_is_reported_with_its_code() {
    for (byte, code) in [
        (1, ReplyCode::GeneralFailure),
        (2, ReplyCode::NotAllowed),
        (4, ReplyCode::HostUnreachable),
        (5, ReplyCode::ConnectionRefused),
        (0x42, ReplyCode::Other(0x42)),
    ] {
        let steps = vec![
            (vec![5, 1, 0], vec![5, 0]),
            (target_bytes(), vec![5, byte, 0, 1, 0, 0, 0, 0, 0, 0]),
        ];
        let (result, _) = run(steps, None).await;
        let err = result.expect_err("failure reply");
        assert_eq!(err.reply_code(), Some(code), "{err:?}");
    }
}

#[tokio::test]
async fn backend_closing_mid_reply_is_unexpected_eof() {
    for cut in 0..REPLY_V4.len() {
        let steps = vec![
            (vec![5, 1, 0], vec![5, 0]),
            (target_bytes(), REPLY_V4[..cut].to_vec()),
        ];
        let (result, _) = run(steps, None).await;
        let err = result.expect_err("truncated reply");
        assert_eq!(
            err.io_kind(),
            Some(io::ErrorKind::UnexpectedEof),
            "cut {cut}: {err:?}"
        );
    }
}

#[tokio::test]
async fn backend_closing_before_method_selection_is_unexpected_eof() {
    let (result, _) = run(vec![(vec![5, 1, 0], vec![5])], None).await;
    let err = result.expect_err("truncated selection");
    assert_eq!(err.io_kind(), Some(io::ErrorKind::UnexpectedEof), "{err:?}");
}

#[tokio::test]
async fn http_answer_instead_of_socks_is_a_codec_error() {
    let (result, _) = run(
        vec![(vec![5, 1, 0], b"HTTP/1.1 400 Bad Request\r\n".to_vec())],
        None,
    )
    .await;
    let err = result.expect_err("garbage");
    assert!(
        matches!(err, ClientError::Codec(CodecError::BadVersion(b'H'))),
        "{err:?}"
    );
}

#[tokio::test]
async fn reply_with_unknown_address_type_is_a_codec_error() {
    let steps = vec![
        (vec![5, 1, 0], vec![5, 0]),
        (target_bytes(), vec![5, 0, 0, 9, 0, 0]),
    ];
    let (result, _) = run(steps, None).await;
    let err = result.expect_err("bad atyp");
    assert!(
        matches!(err, ClientError::Codec(CodecError::BadAddressType(9))),
        "{err:?}"
    );
}

#[tokio::test]
async fn unencodable_target_fails_before_any_byte_is_sent() {
    let (mut ours, mut theirs) = duplex(4096);
    let long = TargetAddr::Domain("a".repeat(256), 80);
    let err = connect(&mut ours, &long, None).await.expect_err("too long");
    assert!(
        matches!(err, ClientError::Codec(CodecError::DomainTooLong(256))),
        "{err:?}"
    );
    drop(ours);
    let mut sent = Vec::new();
    theirs.read_to_end(&mut sent).await.expect("read rest");
    assert_eq!(sent, [0u8; 0]);
}

#[tokio::test]
async fn backend_reset_over_tcp_is_connection_reset() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut greeting = [0; 3];
        stream.read_exact(&mut greeting).await.expect("greeting");
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("linger 0");
        // Closing with linger 0 sends RST instead of FIN.
        drop(stream);
    });
    let mut ours = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect loopback");
    let result = tokio::time::timeout(Duration::from_secs(5), connect(&mut ours, &target(), None))
        .await
        .expect("handshake ends within 5 s");
    peer.await.expect("peer ran");
    let err = result.expect_err("reset");
    assert_eq!(
        err.io_kind(),
        Some(io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_and_server_drivers_complete_a_handshake_with_each_other() {
    use crate::socks5::server::{ServerAuth, accept, reply};

    let creds = Credentials::new("carol", "pw");
    let auth = ServerAuth::Required(vec![creds.clone()]);
    let (mut ours, mut theirs) = duplex(4096);
    let server = tokio::spawn(async move {
        let request = accept(&mut theirs, &auth).await.expect("server accepts");
        let bound = SocketAddr::from(([127, 0, 0, 1], 4242));
        reply(&mut theirs, ReplyCode::Succeeded, bound.into())
            .await
            .expect("server replies");
        theirs.write_all(BANNER).await.expect("banner");
        (request, theirs)
    });
    let bound = connect(&mut ours, &target(), Some(&creds))
        .await
        .expect("client connects");
    assert_eq!(
        bound,
        TargetAddr::Ip(SocketAddr::from(([127, 0, 0, 1], 4242)))
    );
    ours.write_all(b"hello").await.expect("client payload");

    let (request, mut theirs) = server.await.expect("server task");
    assert_eq!(request.target, target());
    let mut banner = vec![0; BANNER.len()];
    ours.read_exact(&mut banner).await.expect("banner arrives");
    assert_eq!(banner, BANNER);
    let mut hello = [0; 5];
    theirs
        .read_exact(&mut hello)
        .await
        .expect("payload arrives");
    assert_eq!(&hello, b"hello");
}

#[tokio::test]
async fn greet_sends_nothing_of_the_request_and_request_then_completes_it() {
    let (mut ours, theirs) = duplex(4096);
    let steps = vec![
        (vec![5, 1, 0], vec![5, 0]),
        (target_bytes(), REPLY_V4.to_vec()),
    ];
    let peer = backend(theirs, steps);
    greet(&mut ours, None).await.expect("greeted");
    // The scripted backend asserts the exact bytes of each step, so a
    // greeting that carried any of the request would fail it here.
    let bound = request(&mut ours, &target()).await.expect("connected");
    assert_eq!(
        bound,
        TargetAddr::Ip(SocketAddr::from(([10, 1, 2, 3], 8080)))
    );
    peer.await.expect("backend script ran to its end");
}
