//! Framing: each message travels as a 4-byte big-endian length followed by that many
//! bytes of postcard. The length is checked against a limit before the body is read or
//! allocated; [`FrameDecoder`] does the same for a byte stream arriving in pieces.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Default upper bound for one frame's body. Requests and replies are small; the
/// larger replies (node lists) stay well below it.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds the limit for this stream.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit in force.
        limit: usize,
    },
    /// A zero-length frame, which no message encodes to.
    #[error("empty frame")]
    Empty,
    /// The body is not a valid message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The body decoded but left bytes unread: a framing mix-up or a forged length.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Encodes `msg` as one frame (length prefix + postcard body).
pub fn encode<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(msg, vec![0u8; HEADER_LEN]).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the body length from a frame header, refusing it before anything is allocated
/// when it is empty or over `limit`.
pub fn body_len(header: [u8; HEADER_LEN], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes one message from a frame body, requiring that it uses every byte.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(msg)
}

/// Splits a byte stream into frame bodies as bytes arrive, without I/O of its own.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `limit`.
    pub fn new(limit: usize) -> Self {
        Self { buf: Vec::new(), limit }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete frame body, if one has arrived. An oversized header fails
    /// as soon as its four bytes are in, however little of the body was sent.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = body_len(*header, self.limit)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Envelope, Request};
    use proptest::prelude::*;

    #[test]
    fn a_frame_round_trips() {
        let msg = Envelope::new(Request::Ping);
        let frame = encode(&msg, MAX_FRAME_LEN).unwrap();
        let len = body_len(frame[..4].try_into().unwrap(), MAX_FRAME_LEN).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<Envelope>(&frame[4..]).unwrap(), msg);
    }

    #[test]
    fn an_oversized_header_is_refused_before_the_body_arrives() {
        let mut d = FrameDecoder::new(1024);
        d.push(&(1_000_000u32).to_be_bytes());
        assert_eq!(d.next_body(), Err(FrameError::TooLarge { len: 1_000_000, limit: 1024 }));
    }

    #[test]
    fn an_empty_frame_is_refused() {
        assert_eq!(body_len([0; 4], 10), Err(FrameError::Empty));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = postcard::to_allocvec(&Envelope::new(Request::Ping)).unwrap();
        body.push(0);
        assert_eq!(decode::<Envelope>(&body), Err(FrameError::Trailing(1)));
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let a = encode(&Envelope::new(Request::Ping), 64).unwrap();
        let mut stream = a.clone();
        stream.extend_from_slice(&a);
        for cut in 0..stream.len() {
            let mut d = FrameDecoder::new(64);
            d.push(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(b) = d.next_body().unwrap() {
                got.push(b);
            }
            d.push(&stream[cut..]);
            while let Some(b) = d.next_body().unwrap() {
                got.push(b);
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_never_over_allocates(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FrameDecoder::new(256);
            d.push(&bytes);
            while let Ok(Some(body)) = d.next_body() {
                prop_assert!(body.len() <= 256);
                let _ = decode::<Envelope>(&body);
                let _ = decode::<crate::messages::Response>(&body);
                let _ = decode::<crate::messages::AgentMessage>(&body);
            }
        }
    }
}
