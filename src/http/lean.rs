//! The lean handler path: for routes that need neither a streamed body nor http-types
//! values. The handler sees the parsed head borrowed from the connection's buffer (method,
//! path, query, headers, and the body when it is small and already read) and writes status,
//! fields and body straight into the response buffer; no http-types value is built. A
//! request it does not take (it returns `false`) goes on to the http-types handler. Drain,
//! hand-over, limits and keep-alive rules are the same for both.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let server = baton::Server::bind("127.0.0.1:8080")?.lean(|req, res| {
//!     if req.method() != "GET" || req.path() != "/hello" {
//!         return false; // to the http-types handler
//!     }
//!     res.header("content-type", "text/plain");
//!     res.body().extend_from_slice(b"Hello!\n");
//!     true
//! });
//! # let _ = server;
//! # Ok(())
//! # }
//! ```

use std::rc::Rc;

use crate::http::codec;

/// A request as the lean handler sees it: borrowed from the connection's read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a [httparse::Header<'a>],
    pub(crate) body: &'a [u8],
}

impl<'a> Request<'a> {
    /// `GET`, `POST`, … (case-sensitive, as sent).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The target's path, as sent (not percent-decoded).
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The target's query, after `?`, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The first field named `name` (ASCII case-insensitive), as sent.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every field, as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// The body (empty for a request without one).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// The response the lean handler writes: a status (default 200), fields, and a body. The
/// server adds `date`, `content-length` and `connection`.
#[derive(Debug)]
pub struct Response<'o> {
    pub(crate) status: u16,
    pub(crate) fields: &'o mut Vec<u8>,
    pub(crate) body: &'o mut Vec<u8>,
}

impl Response<'_> {
    /// Sets the status code (100–999; 200 if never set).
    pub fn status(&mut self, status: u16) -> &mut Self {
        self.status = status.clamp(100, 999);
        self
    }

    /// Adds a field. `name` and `value` must not hold CR or LF (such a field is dropped);
    /// `content-length`, `transfer-encoding` and `connection` are the server's and dropped.
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        let framing = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f));
        let broken = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
        if !framing && !broken(name) && !broken(value) && !name.is_empty() {
            self.fields.extend_from_slice(name.as_bytes());
            self.fields.extend_from_slice(b": ");
            self.fields.extend_from_slice(value.as_bytes());
            self.fields.extend_from_slice(b"\r\n");
        }
        self
    }

    /// The body, to append to.
    pub fn body(&mut self) -> &mut Vec<u8> {
        self.body
    }
}

/// The application's lean handler.
pub(crate) type Handler = Rc<dyn Fn(&Request<'_>, &mut Response<'_>) -> bool>;

/// The whole response into `out`: status line, the handler's fields, `date` (unless set),
/// `content-length`, `connection`, and the body (not for HEAD).
pub(crate) fn encode(
    out: &mut Vec<u8>,
    status: u16,
    fields: &[u8],
    body: &[u8],
    head_only: bool,
    close: bool,
    minor: u8,
) {
    let reason = http_types::StatusCode::try_from(status)
        .map(|s| s.canonical_reason())
        .unwrap_or("");
    // The same framing as for the http-types handler: a 304 never sends its body either.
    let bodyless = codec::bodyless(status);
    let head = codec::ResponseHead {
        status,
        reason,
        length: codec::Length::of(status, Some(body.len() as u64), minor),
        close,
        minor,
    };
    out.clear();
    head.encode_raw_fields(fields, out);
    if !head_only && !bodyless {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_whole_response_and_drops_framing_fields() {
        let (mut fields, mut body) = (Vec::new(), Vec::new());
        let mut res = Response {
            status: 200,
            fields: &mut fields,
            body: &mut body,
        };
        res.status(404)
            .header("content-length", "9")
            .header("x-a", "1")
            .header("x-bad", "a\r\nb")
            .header("date", "x");
        res.body().extend_from_slice(b"gone");
        let status = res.status;
        let mut out = Vec::new();
        encode(&mut out, status, &fields, &body, false, true, 1);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nx-a: 1\r\ndate: x\r\ncontent-length: 4\r\n\
              connection: close\r\n\r\ngone"
                .to_vec()
        );
        // A 304's body is never sent (a client would read it as the next response).
        encode(&mut out, 304, b"date: x\r\n", b"gone", false, false, 1);
        // (The reason phrase is http-types' own: "Modified".)
        assert!(out.starts_with(b"HTTP/1.1 304 "));
        assert!(out.ends_with(b"\r\ndate: x\r\ncontent-length: 0\r\n\r\n"));
        encode(&mut out, 200, b"date: x\r\n", b"gone", true, false, 0);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 4\r\nconnection: keep-alive\r\n\r\n"
                .to_vec()
        );
    }
}
