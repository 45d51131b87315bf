//! Reading a request head: until the buffer holds one, then the request built from it
//! (http-types', or the lean handler's, answered right there).

use super::*;

pub(super) enum HeadError {
    Closed,
    TimedOut,
    Reject(Reject),
}

/// A request whose head has been read, and how its connection goes on.
pub(super) struct Next {
    pub(super) request: Request,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    pub(super) minor: u8,
}

/// Reads until `buf` holds a whole request head, then builds the request from it and consumes
/// the head from the buffer (a pipelined request behind it stays there).
pub(super) async fn next_request(
    io: &Stream,
    buf: &mut ReadBuf,
    requests: &mut Requests,
    options: &Options,
    mut lean: Option<(&mut Lean, &mut Vec<u8>, &Drain)>,
) -> Result<Work, HeadError> {
    loop {
        let mut headers = codec::no_headers();
        let next = match codec::parse_head(buf.pending(), &mut headers, options.max_head) {
            Ok(Some(head)) => {
                if let Some((lean, out, drain)) = lean.as_mut() {
                    let max_body = options.max_body;
                    let keep_alive = head.keep_alive;
                    let taken = try_lean(&head, buf.pending(), max_body, lean, out, io, drain);
                    if let Some(used) = taken {
                        let close = used.1;
                        buf.consume(used.0);
                        buf.shrink();
                        return Ok(Work::Lean { close, keep_alive });
                    }
                }
                let request = requests.build(&head).map_err(HeadError::Reject)?;
                let next = Box::new(Next {
                    request,
                    framing: head.framing,
                    keep_alive: head.keep_alive,
                    expect_continue: head.expect_continue,
                    minor: head.minor,
                });
                Ok(Some((next, head.len)))
            }
            Ok(None) => Ok(None),
            Err(reject) => Err(reject),
        };
        // (Acted on once the head's borrow of the buffer has ended.)
        match next {
            Ok(Some((next, len))) => {
                buf.consume(len);
                buf.shrink();
                return Ok(Work::Full(next));
            }
            Ok(None) => {}
            // A later HTTP/1.x is served as 1.1 (RFC 9112 §2.3); httparse knows 1.0 and 1.1.
            Err(Reject::UnsupportedVersion) if codec::downgrade_minor(buf.pending_mut()) => {
                continue;
            }
            Err(reject) => return Err(HeadError::Reject(reject)),
        }
        match buf.fill(io, options.max_head).await {
            Ok(0) if buf.pending().is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Reject(Reject::BadRequest(
                    "connection closed inside the head",
                )));
            }
            Ok(_) => {}
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// Offers a parsed request to the lean handler: only an origin-form request with an
/// upper-case method and no body, or a body of known length already in `pending`. Taken: the
/// response is encoded into `out`, and the bytes the request used and whether the
/// connection closes after it come back.
fn try_lean(
    head: &codec::Head<'_, '_>,
    pending: &[u8],
    max_body: u64,
    lean: &mut Lean,
    out: &mut Vec<u8>,
    io: &Stream,
    drain: &Drain,
) -> Option<(usize, bool)> {
    let body_len = match head.framing {
        Framing::None => 0,
        // Over the limit: the http-types path refuses it (413).
        Framing::Length(n) if n > max_body => return None,
        Framing::Length(n) => usize::try_from(n).ok()?,
        Framing::Chunked => return None,
    };
    let end = head.len.checked_add(body_len)?;
    if end > pending.len() || head.expect_continue || !head.target.starts_with('/') {
        return None;
    }
    if head.method.bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    // A byte loop: targets are short, and `split_once`'s char search costs more.
    let (path, query) = match head.target.bytes().position(|b| b == b'?') {
        Some(at) => (&head.target[..at], Some(&head.target[at + 1..])),
        None => (head.target, None),
    };
    let request = crate::http::lean::Request {
        method: head.method,
        path,
        query,
        headers: head.headers,
        body: &pending[head.len..end],
    };
    lean.fields.clear();
    lean.body.clear();
    let mut response = crate::http::lean::Response {
        status: 200,
        fields: &mut lean.fields,
        body: &mut lean.body,
    };
    if !(lean.handler)(&request, &mut response) {
        return None;
    }
    let status = response.status;
    // The same rules as for the http-types handler: the request's keep-alive, and a drain
    // closes connections it cannot hand over.
    let close = !head.keep_alive || (drain.is_draining() && !relayable(io, drain));
    let head_only = head.method == "HEAD";
    crate::http::lean::encode(
        out,
        status,
        &lean.fields,
        &lean.body,
        head_only,
        close,
        head.minor,
    );
    Some((end, close))
}
