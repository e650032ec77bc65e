//! Fuzzes every SOCKS5 decoder with arbitrary bytes. Checks, beyond "does not
//! panic": a decoded message re-encodes and decodes to itself with the same
//! length, and a driver that reads exactly what `NeedMore` asks for reaches
//! the same answer as decoding everything at once, never asking past the end
//! of the message.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/socks5/codec.rs"]
#[expect(
    dead_code,
    reason = "the fuzz target uses only the decoders and encoders"
)]
mod codec;

use codec::{
    AuthRequest, AuthResponse, CodecError, Decoded, Greeting, MethodSelection, Reply, Request,
};

type Decode<T> = fn(&[u8]) -> Result<Decoded<T>, CodecError>;
type Encode<T> = fn(&T, &mut Vec<u8>) -> Result<(), CodecError>;

fn check<T: PartialEq + std::fmt::Debug>(data: &[u8], decode: Decode<T>, encode: Encode<T>) {
    let whole = decode(data);

    // The exact-read driver: start empty, add exactly what is asked for.
    let mut have = 0usize;
    let exact = loop {
        match decode(&data[..have]) {
            Ok(Decoded::NeedMore(n)) => {
                assert!(n >= 1, "NeedMore(0) would stall a driver");
                if have + n > data.len() {
                    break None;
                }
                have += n;
            }
            other => break Some(other),
        }
    };

    match (&whole, exact) {
        (Ok(Decoded::Done(msg, consumed)), Some(Ok(Decoded::Done(msg2, consumed2)))) => {
            assert_eq!((msg, *consumed), (&msg2, consumed2));
            assert_eq!(have, *consumed, "driver read past the message");
            let mut out = Vec::new();
            encode(msg, &mut out).expect("a decoded message re-encodes");
            match decode(&out) {
                Ok(Decoded::Done(again, len)) => {
                    assert_eq!(&again, msg);
                    assert_eq!(len, out.len());
                    assert_eq!(len, *consumed);
                }
                other => panic!("re-encoded message decodes as {other:?}"),
            }
        }
        // Errors are found on the same byte either way.
        (Err(e), Some(Err(e2))) => assert_eq!(e, &e2),
        // The driver would still be waiting for bytes the input lacks; the
        // whole input may already show garbage further on.
        (Ok(Decoded::NeedMore(_)) | Err(_), None) => {}
        (whole, exact) => panic!("whole input gave {whole:?}, exact driver gave {exact:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => check(data, Greeting::decode, Greeting::encode),
        1 => check(data, MethodSelection::decode, |m, out| {
            m.encode(out);
            Ok(())
        }),
        2 => check(data, AuthRequest::decode, AuthRequest::encode),
        3 => check(data, AuthResponse::decode, |m, out| {
            m.encode(out);
            Ok(())
        }),
        4 => check(data, Request::decode, Request::encode),
        _ => check(data, Reply::decode, Reply::encode),
    }
});
