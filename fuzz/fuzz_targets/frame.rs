//! A byte stream as a QUIC stream delivers it: split into frames by `FrameDecoder` (in
//! pieces of a size the first byte picks), each body read the way the manager reads an
//! envelope (version prefix first) and decoded as every first-frame and session type.
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_fuzz::fuzz_target;
use shoal_fuzz::round_trip;
use shoal_proto::frame::FrameDecoder;
use shoal_proto::{AgentMessage, Envelope, ManagerMessage, Response};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else { return };
    let mut decoder = FrameDecoder::new(LIMIT);
    for chunk in stream.chunks(usize::from(piece).max(1)) {
        decoder.push(chunk);
        loop {
            match decoder.next_body() {
                Ok(Some(body)) => {
                    assert!(!body.is_empty() && body.len() <= LIMIT, "a frame body broke its bound");
                    body_as_everything(&body);
                }
                Ok(None) => break,
                // A refused header ends the stream, as it ends the connection.
                Err(_) => return,
            }
        }
    }
});

fn body_as_everything(body: &[u8]) {
    // The manager reads the version alone before the rest: it must decode from any
    // envelope, and agree with the full decode when both succeed.
    let version = postcard::take_from_bytes::<u16>(body).ok().map(|(v, _)| v);
    if let Some(envelope) = round_trip::<Envelope>(body) {
        assert_eq!(Some(envelope.version), version);
    }
    round_trip::<Response>(body);
    round_trip::<AgentMessage>(body);
    round_trip::<ManagerMessage>(body);
}
