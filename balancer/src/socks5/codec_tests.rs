use std::net::{Ipv6Addr, SocketAddrV6};

use proptest::prelude::*;

use super::*;

type DecodeFn<T> = fn(&[u8]) -> Result<Decoded<T>, CodecError>;

fn target_addr() -> impl Strategy<Value = TargetAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| TargetAddr::Ip(SocketAddr::from((ip, port)))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| TargetAddr::Ip(
            SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0).into()
        )),
        ("[a-z0-9.-]{1,255}", any::<u16>()).prop_map(|(name, port)| TargetAddr::Domain(name, port)),
        // Multi-byte UTF-8: the length limit is in bytes, not chars.
        ("\\PC{1,60}", any::<u16>()).prop_map(|(name, port)| TargetAddr::Domain(name, port)),
    ]
}

fn credentials() -> impl Strategy<Value = Credentials> {
    ("[ -~]{0,255}", "[ -~]{0,255}").prop_map(|(u, p)| Credentials::new(u, p))
}

fn greeting() -> impl Strategy<Value = Greeting> {
    prop::collection::vec(any::<u8>().prop_map(Method::from), 1..=255)
        .prop_map(|methods| Greeting { methods })
}

fn request() -> impl Strategy<Value = Request> {
    let command = prop_oneof![
        Just(Command::Connect),
        Just(Command::Bind),
        Just(Command::UdpAssociate)
    ];
    (command, target_addr()).prop_map(|(command, target)| Request { command, target })
}

fn reply() -> impl Strategy<Value = Reply> {
    (any::<u8>().prop_map(ReplyCode::from), target_addr())
        .prop_map(|(code, bound)| Reply { code, bound })
}

/// Checks one valid encoding: it decodes back to `msg` using all of it; every
/// strict prefix asks for more, never more than is missing; and a driver
/// that reads exactly what `NeedMore` says stops on the last byte.
fn check_encoding<T: PartialEq + Clone + std::fmt::Debug>(
    msg: &T,
    bytes: &[u8],
    decode: DecodeFn<T>,
) {
    // Trailing bytes (the payload after a handshake) must not be consumed.
    let mut with_tail = bytes.to_vec();
    with_tail.extend_from_slice(b"payload");
    assert_eq!(
        decode(&with_tail),
        Ok(Decoded::Done(msg.clone(), bytes.len()))
    );

    for cut in 0..bytes.len() {
        match decode(&bytes[..cut]) {
            Ok(Decoded::NeedMore(n)) => {
                assert!(n >= 1 && n <= bytes.len() - cut, "prefix {cut}: need {n}");
            }
            other => panic!("prefix of {cut}/{} bytes gave {other:?}", bytes.len()),
        }
    }

    let mut have = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps <= 600, "decoder never finished");
        match decode(&bytes[..have]) {
            Ok(Decoded::NeedMore(n)) => have += n,
            Ok(Decoded::Done(_, consumed)) => {
                assert_eq!((have, consumed), (bytes.len(), bytes.len()));
                break;
            }
            Err(e) => panic!("exact driver hit {e}"),
        }
    }
}

proptest! {
    #[test]
    fn greetings_round_trip_and_every_prefix_needs_more(msg in greeting()) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes).expect("valid greeting encodes");
        check_encoding(&msg, &bytes, Greeting::decode);
    }

    #[test]
    fn method_selections_round_trip_and_every_prefix_needs_more(byte in any::<u8>()) {
        let msg = MethodSelection { method: Method::from(byte) };
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        check_encoding(&msg, &bytes, MethodSelection::decode);
    }

    #[test]
    fn auth_requests_round_trip_and_every_prefix_needs_more(credentials in credentials()) {
        let msg = AuthRequest { credentials };
        let mut bytes = Vec::new();
        msg.encode(&mut bytes).expect("valid credentials encode");
        check_encoding(&msg, &bytes, AuthRequest::decode);
    }

    #[test]
    fn auth_responses_round_trip_and_every_prefix_needs_more(status in any::<u8>()) {
        let msg = AuthResponse { status };
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        check_encoding(&msg, &bytes, AuthResponse::decode);
    }

    #[test]
    fn requests_round_trip_and_every_prefix_needs_more(msg in request()) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes).expect("valid request encodes");
        check_encoding(&msg, &bytes, Request::decode);
    }

    #[test]
    fn replies_round_trip_and_every_prefix_needs_more(msg in reply()) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes).expect("valid reply encodes");
        check_encoding(&msg, &bytes, Reply::decode);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_done_never_overruns(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        fn check<T>(bytes: &[u8], decode: DecodeFn<T>) {
            match decode(bytes) {
                Ok(Decoded::Done(_, consumed)) => assert!(consumed <= bytes.len()),
                Ok(Decoded::NeedMore(n)) => assert!(n >= 1),
                Err(_) => {}
            }
        }
        check(&bytes, Greeting::decode);
        check(&bytes, MethodSelection::decode);
        check(&bytes, AuthRequest::decode);
        check(&bytes, AuthResponse::decode);
        check(&bytes, Request::decode);
        check(&bytes, Reply::decode);
    }

    #[test]
    fn every_wrong_socks_version_is_bad_version(ver in any::<u8>().prop_filter("not 5", |v| *v != VERSION)) {
        let bytes = [ver, 1, 0, 1, 127, 0, 0, 1, 0, 80];
        prop_assert_eq!(Greeting::decode(&bytes[..1]), Err(CodecError::BadVersion(ver)));
        prop_assert_eq!(MethodSelection::decode(&bytes), Err(CodecError::BadVersion(ver)));
        prop_assert_eq!(Request::decode(&bytes), Err(CodecError::BadVersion(ver)));
        prop_assert_eq!(Reply::decode(&bytes[..1]), Err(CodecError::BadVersion(ver)));
    }

    #[test]
    fn every_wrong_auth_version_is_bad_auth_version(ver in any::<u8>().prop_filter("not 1", |v| *v != AUTH_VERSION)) {
        prop_assert_eq!(AuthRequest::decode(&[ver, 1, b'u', 1, b'p']), Err(CodecError::BadAuthVersion(ver)));
        prop_assert_eq!(AuthResponse::decode(&[ver]), Err(CodecError::BadAuthVersion(ver)));
    }

    #[test]
    fn every_unknown_address_type_is_bad_address_type(atyp in any::<u8>().prop_filter("unknown", |a| ![1, 3, 4].contains(a))) {
        prop_assert_eq!(Request::decode(&[5, 1, 0, atyp]), Err(CodecError::BadAddressType(atyp)));
        prop_assert_eq!(Reply::decode(&[5, 0, 0, atyp, 1, 2, 3]), Err(CodecError::BadAddressType(atyp)));
    }

    #[test]
    fn every_unknown_command_is_bad_command(cmd in any::<u8>().prop_filter("unknown", |c| !(1..=3).contains(c))) {
        prop_assert_eq!(Request::decode(&[5, cmd]), Err(CodecError::BadCommand(cmd)));
    }
}

#[test]
fn greeting_with_zero_methods_is_no_methods() {
    assert_eq!(Greeting::decode(&[5, 0]), Err(CodecError::NoMethods));
    assert_eq!(
        Greeting { methods: vec![] }.encode(&mut Vec::new()),
        Err(CodecError::NoMethods)
    );
}

#[test]
fn greeting_with_256_methods_cannot_be_encoded() {
    let msg = Greeting {
        methods: vec![Method::NoAuth; 256],
    };
    assert_eq!(
        msg.encode(&mut Vec::new()),
        Err(CodecError::TooManyMethods(256))
    );
}

#[test]
fn zero_length_domain_is_empty_domain() {
    assert_eq!(
        Request::decode(&[5, 1, 0, 3, 0]),
        Err(CodecError::EmptyDomain)
    );
    let msg = Request {
        command: Command::Connect,
        target: TargetAddr::Domain(String::new(), 80),
    };
    assert_eq!(msg.encode(&mut Vec::new()), Err(CodecError::EmptyDomain));
}

#[test]
fn domain_of_256_bytes_cannot_be_encoded() {
    let msg = Request {
        command: Command::Connect,
        target: TargetAddr::Domain("a".repeat(256), 80),
    };
    assert_eq!(
        msg.encode(&mut Vec::new()),
        Err(CodecError::DomainTooLong(256))
    );
}

#[test]
fn non_utf8_domain_is_rejected() {
    assert_eq!(
        Request::decode(&[5, 1, 0, 3, 2, 0xC3, 0x28, 0, 80]),
        Err(CodecError::NonUtf8Domain)
    );
}

#[test]
fn non_utf8_credentials_are_rejected() {
    assert_eq!(
        AuthRequest::decode(&[1, 1, 0xFF, 1, b'p']),
        Err(CodecError::NonUtf8Credentials)
    );
}

#[test]
fn overlong_credentials_cannot_be_encoded() {
    let long = "x".repeat(256);
    let user = AuthRequest {
        credentials: Credentials::new(long.clone(), "p"),
    };
    let pass = AuthRequest {
        credentials: Credentials::new("u", long),
    };
    assert_eq!(
        user.encode(&mut Vec::new()),
        Err(CodecError::UsernameTooLong(256))
    );
    assert_eq!(
        pass.encode(&mut Vec::new()),
        Err(CodecError::PasswordTooLong(256))
    );
}

#[test]
fn request_encodes_as_rfc_1928_shows() {
    let msg = Request {
        command: Command::Connect,
        target: TargetAddr::Domain("ab".into(), 443),
    };
    let mut bytes = Vec::new();
    msg.encode(&mut bytes).expect("valid request encodes");
    assert_eq!(bytes, [5, 1, 0, 3, 2, b'a', b'b', 0x01, 0xBB]);
}

#[test]
fn password_debug_never_shows_the_secret() {
    let creds = Credentials::new("alice", "hunter2");
    let shown = format!("{creds:?}");
    assert!(shown.contains("alice") && shown.contains("***"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn byte_conversions_round_trip_for_every_value() {
    for byte in 0..=u8::MAX {
        assert_eq!(u8::from(Method::from(byte)), byte);
        assert_eq!(u8::from(ReplyCode::from(byte)), byte);
        if let Ok(command) = Command::try_from(byte) {
            assert_eq!(u8::from(command), byte);
        }
    }
}
