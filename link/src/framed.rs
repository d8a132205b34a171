//! Postcard frames on QUIC streams: the length limit of `shoal_proto::frame` is checked
//! before anything is read into memory, the body buffer grows only as bytes arrive (a
//! peer that announces 1 MiB and sends ten bytes costs ten bytes), and a frame whose body
//! does not arrive in time is abandoned.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::frame;

use crate::LinkError;

/// How long a frame's body may take once its header arrived, unless a caller asks for
/// another bound: a megabyte at a slow board's pace, and not the hours a stalled peer
/// would hold a buffer.
pub const BODY_TIME: Duration = Duration::from_secs(30);

/// Largest piece of a body read at once.
const READ_CHUNK: usize = 64 * 1024;

/// Sends one message as one frame.
pub async fn send<T: Serialize>(stream: &mut quinn::SendStream, msg: &T) -> Result<(), LinkError> {
    let bytes = frame::encode(msg, frame::MAX_FRAME_LEN)?;
    stream.write_all(&bytes).await?;
    Ok(())
}

/// Receives one message, or `None` when the peer finished the stream cleanly between
/// frames.
pub async fn recv<T: DeserializeOwned>(stream: &mut quinn::RecvStream, limit: usize) -> Result<Option<T>, LinkError> {
    match recv_body(stream, limit).await? {
        Some(body) => Ok(Some(frame::decode(&body)?)),
        None => Ok(None),
    }
}

/// Receives one frame body undecoded (still length-checked), for callers that must look
/// at a prefix, such as the protocol version, before choosing how to decode the rest.
pub async fn recv_body(stream: &mut quinn::RecvStream, limit: usize) -> Result<Option<Vec<u8>>, LinkError> {
    recv_body_within(stream, limit, BODY_TIME).await
}

/// [`recv_body`] with the time the body may take after its header.
pub async fn recv_body_within(
    stream: &mut quinn::RecvStream,
    limit: usize,
    body_time: Duration,
) -> Result<Option<Vec<u8>>, LinkError> {
    let mut header = [0u8; frame::HEADER_LEN];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::body_len(header, limit)?;
    let body =
        tokio::time::timeout(body_time, read_body(stream, len)).await.map_err(|_| LinkError::Timeout(body_time))??;
    Ok(Some(body))
}

/// Reads exactly `len` bytes, growing the buffer with what arrives rather than
/// allocating the announced length up front.
async fn read_body(stream: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, LinkError> {
    let mut body = Vec::with_capacity(len.min(READ_CHUNK));
    while body.len() < len {
        let want = (len - body.len()).min(READ_CHUNK);
        match stream.read_chunk(want, true).await.map_err(quinn::ReadExactError::ReadError)? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(quinn::ReadExactError::FinishedEarly(body.len()).into()),
        }
    }
    Ok(body)
}
