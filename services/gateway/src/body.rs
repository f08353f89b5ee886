//! Reading a request body within its route's limit and the body timeout. For protobuf bodies
//! the login session is checked as soon as it has arrived: the seed's clients write fields in
//! number order, so `session_id` comes before a file's bytes, and a request with a bad session
//! is refused after its first few bytes instead of after megabytes.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use prost::Name;

use crate::Gateway;
use crate::codec::Format;

/// How far into a body the session is looked for before reading on without the early check.
const SCAN_WINDOW: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("request body did not arrive in time")]
    Timeout,
    #[error("request body could not be read: {0}")]
    Read(String),
    #[error("login session is invalid or expired; please log in")]
    BadSession,
}

/// A request body, and the session the early check found live in it (with its user).
pub struct Read {
    pub bytes: Bytes,
    pub session: Option<(String, String)>,
}

/// The body of a request of type `Req`, at most `limit` bytes.
pub async fn read<Req: Name>(gw: &Gateway, format: Format, body: Body, limit: usize) -> Result<Read, BodyError> {
    let field = (format == Format::Protobuf && limit > SCAN_WINDOW).then(|| session_field::<Req>()).flatten();
    tokio::time::timeout(gw.args.body_read_timeout, collect(gw, body, limit, field))
        .await
        .map_err(|_| BodyError::Timeout)?
}

async fn collect(gw: &Gateway, body: Body, limit: usize, mut field: Option<u32>) -> Result<Read, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut live = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
        if let Some(number) = field {
            match scan(&buf, number) {
                Scan::NeedMore if buf.len() < SCAN_WINDOW => {}
                Scan::Found(session) => {
                    field = None;
                    let session = String::from_utf8_lossy(session).into_owned();
                    // A store failure is reported properly after the full read.
                    match gw.sessions.resolve(&session).await {
                        Ok(None) => return Err(BodyError::BadSession),
                        Ok(Some(user)) => live = Some((session, user)),
                        Err(_) => {}
                    }
                }
                _ => field = None,
            }
        }
    }
    Ok(Read { bytes: buf.freeze(), session: live })
}

/// The field number of `session_id` in `Req`, if it has one.
fn session_field<Req: Name>() -> Option<u32> {
    let desc = chatmesh_proto::descriptor_pool().get_message_by_name(&Req::full_name())?;
    desc.get_field_by_name("session_id").map(|f| f.number())
}

#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    Found(&'a [u8]),
    NeedMore,
    /// Not where the early check can find it (a large field first, or not protobuf at all).
    GiveUp,
}

fn varint(buf: &[u8]) -> Option<Result<(u64, usize), ()>> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(Ok((value, i + 1)));
        }
    }
    if buf.len() >= 10 { Some(Err(())) } else { None }
}

/// Walks the top-level fields of a protobuf prefix looking for length-delimited field `number`.
pub fn scan(buf: &[u8], number: u32) -> Scan<'_> {
    let mut i = 0usize;
    loop {
        let Some(key) = varint(&buf[i..]) else { return Scan::NeedMore };
        let Ok((key, n)) = key else { return Scan::GiveUp };
        i += n;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => match varint(&buf[i..]) {
                None => return Scan::NeedMore,
                Some(Err(())) => return Scan::GiveUp,
                Some(Ok((_, n))) => i += n,
            },
            1 => i += 8,
            5 => i += 4,
            2 => {
                let Some(len) = varint(&buf[i..]) else { return Scan::NeedMore };
                let Ok((len, n)) = len else { return Scan::GiveUp };
                i += n;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if field == u64::from(number) {
                    if len > 1024 {
                        return Scan::GiveUp;
                    }
                    return match buf.get(i..i + len) {
                        Some(session) => Scan::Found(session),
                        None => Scan::NeedMore,
                    };
                }
                if len > SCAN_WINDOW {
                    return Scan::GiveUp;
                }
                i = i.saturating_add(len);
            }
            _ => return Scan::GiveUp,
        }
        if i > buf.len() {
            return Scan::NeedMore;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatmesh_proto::{FileUploadData, PutSingleFileReq};
    use prost::Message;

    #[test]
    fn the_session_is_found_before_the_file() {
        let req = PutSingleFileReq {
            request_id: "r".into(),
            session_id: Some("s3ss10n".into()),
            file_data: Some(FileUploadData { file_name: "f".into(), file_size: 0, file_content: vec![1; 100_000] }),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        assert_eq!(scan(&bytes[..20], 3), Scan::Found(b"s3ss10n"));
        assert_eq!(scan(&bytes[..5], 3), Scan::NeedMore);
        let no_session = PutSingleFileReq { file_data: req.file_data.clone(), ..Default::default() }.encode_to_vec();
        assert_eq!(scan(&no_session, 3), Scan::GiveUp);
        assert_eq!(scan(&[0xff; 20], 3), Scan::GiveUp);
    }
}
