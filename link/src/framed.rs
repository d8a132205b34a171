//! Postcard frames on QUIC streams: the length limit of `shoal_proto::frame` is checked
//! before a body buffer is allocated.

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::frame;

use crate::LinkError;

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
    let mut header = [0u8; frame::HEADER_LEN];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::body_len(header, limit)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(Some(body))
}
