//! The HTTP/1.1 wire format, by RFC 9112, as pure functions over byte slices: request heads
//! (on `httparse`), request body framing (Content-Length, chunked with trailers), and response
//! heads ([`ResponseHead`]). Nothing here does I/O; [`crate::http::conn`] feeds it from the connection's buffer.
//!
//! Strict where leniency enables request smuggling: Content-Length together with
//! Transfer-Encoding, a duplicate or malformed Content-Length, bad chunk sizes, obs-fold, bare
//! LF line endings and control characters in headers are all rejected.

use std::fmt;

/// Most header fields in one request head.
pub(crate) const MAX_HEADERS: usize = 64;

/// Why a request cannot be served; each maps to a status code and ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// 400, with what was wrong.
    BadRequest(&'static str),
    /// 431: the head is larger than the limit, or has too many fields.
    HeadTooLarge,
    /// 413: the body is larger than the limit.
    BodyTooLarge,
    /// 408: the body stalled longer than the body timeout.
    BodyTimedOut,
    /// 408: the head took longer than the header timeout.
    HeadTimedOut,
    /// 400: not HTTP/1.x.
    UnsupportedVersion,
    /// 414: the request line alone is longer than the head limit.
    UriTooLong,
    /// 417: an `Expect` other than `100-continue`.
    ExpectationFailed,
    /// 501: a transfer coding or method this server does not implement.
    NotImplemented(&'static str),
}

impl Reject {
    pub(crate) fn status(self) -> http_types::StatusCode {
        use http_types::StatusCode;
        match self {
            Reject::BadRequest(_) | Reject::UnsupportedVersion => StatusCode::BadRequest,
            Reject::HeadTooLarge => StatusCode::RequestHeaderFieldsTooLarge,
            Reject::BodyTooLarge => StatusCode::PayloadTooLarge,
            Reject::BodyTimedOut | Reject::HeadTimedOut => StatusCode::RequestTimeout,
            Reject::UriTooLong => StatusCode::UriTooLong,
            Reject::ExpectationFailed => StatusCode::ExpectationFailed,
            Reject::NotImplemented(_) => StatusCode::NotImplemented,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::BadRequest(why) => write!(f, "bad request: {why}"),
            Reject::UnsupportedVersion => f.write_str("bad request: unsupported HTTP version"),
            Reject::HeadTooLarge => f.write_str("request head too large"),
            Reject::BodyTooLarge => f.write_str("request body too large"),
            Reject::BodyTimedOut => f.write_str("request body timed out"),
            Reject::HeadTimedOut => f.write_str("request head timed out"),
            Reject::UriTooLong => f.write_str("request target too long"),
            Reject::ExpectationFailed => f.write_str("unsupported expectation (only 100-continue)"),
            Reject::NotImplemented(what) => write!(f, "not implemented: {what}"),
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head, borrowing from the read buffer.
#[derive(Debug)]
pub(crate) struct Head<'b, 'h> {
    pub(crate) method: &'b str,
    pub(crate) target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    pub(crate) headers: &'h [httparse::Header<'b>],
    pub(crate) host: Option<&'b [u8]>,
    pub(crate) framing: Framing,
    /// The connection may stay open after this exchange (version default and `Connection`).
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    /// Length of the head in bytes, including the blank line.
    pub(crate) len: usize,
}

/// Room for a request head's fields, uninitialised until parsed into: [`no_headers`].
pub(crate) type Headers<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Storage for [`parse_head`], uninitialised.
pub(crate) fn no_headers<'b>() -> Headers<'b> {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses one request head from the start of `buf`. `Ok(None)`: incomplete, read more.
pub(crate) fn parse_head<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut Headers<'b>,
    max_head: usize,
) -> Result<Option<Head<'b, 'h>>, Reject> {
    // Leading empty lines before a request line are allowed (RFC 9112 §2.2). The fields go
    // into storage left uninitialised: nothing is zeroed per request.
    let mut request = httparse::Request::new(&mut []);
    let status = match request.parse_with_uninit_headers(buf, headers) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(Reject::UnsupportedVersion),
        Err(httparse::Error::HeaderName) => {
            return Err(Reject::BadRequest(
                "invalid header name (obs-fold or a stray character?)",
            ));
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(Reject::BadRequest(
                "invalid header value (control character?)",
            ));
        }
        Err(httparse::Error::NewLine) => return Err(Reject::BadRequest("invalid line ending")),
        Err(httparse::Error::Token) => {
            return Err(Reject::BadRequest("invalid token in the request line"));
        }
        Err(_) => return Err(Reject::BadRequest("malformed request head")),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            return if buf.len() >= max_head {
                Err(too_large(buf, max_head))
            } else {
                Ok(None)
            };
        }
    };
    if len > max_head {
        return Err(too_large(buf, max_head));
    }
    // httparse accepts a bare LF as a line ending; a proxy in front may not. Refuse it.
    if head_has_bare_lf(&buf[..len], request.headers) {
        return Err(Reject::BadRequest("bare LF line ending"));
    }
    let method = request.method.ok_or(Reject::BadRequest("no method"))?;
    let target = request
        .path
        .ok_or(Reject::BadRequest("no request target"))?;
    let minor = request.version.ok_or(Reject::BadRequest("no version"))?;
    let headers: &'h [httparse::Header<'b>] = request.headers;

    let mut host = None;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for header in headers {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(Reject::BadRequest("more than one Content-Length"));
            }
            content_length = Some(parse_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Codings accumulate over repeated fields; chunked must be the last one.
            for coding in list(value) {
                if chunked {
                    return Err(Reject::BadRequest("a transfer coding after chunked"));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else if coding.is_empty() {
                    return Err(Reject::BadRequest("empty transfer coding"));
                } else {
                    return Err(Reject::NotImplemented(
                        "transfer codings other than chunked",
                    ));
                }
            }
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(Reject::BadRequest("more than one Host"));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in list(value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(Reject::ExpectationFailed);
            }
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(Reject::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if transfer_encoding && !chunked {
        return Err(Reject::BadRequest("Transfer-Encoding without chunked"));
    }
    if transfer_encoding && minor == 0 {
        return Err(Reject::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    if minor == 1 && host.is_none() {
        return Err(Reject::BadRequest("HTTP/1.1 request without Host"));
    }
    let framing = match (chunked, content_length) {
        (true, _) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = if minor == 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    Ok(Some(Head {
        method,
        target,
        minor,
        headers,
        host,
        framing,
        keep_alive,
        expect_continue: expect_continue && minor == 1 && framing != Framing::None,
        len,
    }))
}

/// A request line ending in `HTTP/1.D` with D from 2 to 9 gets D = 1, in place: such a
/// request is served as HTTP/1.1 (RFC 9112 §2.3). `false` if there is no such line (yet).
pub(crate) fn downgrade_minor(buf: &mut [u8]) -> bool {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match buf[..end] {
        [
            ..,
            b' ',
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            ref mut minor,
        ] if (b'2'..=b'9').contains(minor) => {
            *minor = b'1';
            true
        }
        _ => false,
    }
}

/// A head over the limit: 414 if the request line alone is (the target, then), else 431.
fn too_large(buf: &[u8], max_head: usize) -> Reject {
    let line = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(buf.len());
    if line >= max_head {
        Reject::UriTooLong
    } else {
        Reject::HeadTooLarge
    }
}

/// Whether a line of `head`, a complete head that httparse parsed into `fields`, ends in LF
/// without CR. httparse takes an LF only as a line's end (a field value cannot hold one and a
/// request's field lines cannot fold), and every line ends either right before a field's name
/// or as one of the head's last two lines, so only those bytes are looked at: ~20 instructions
/// where scanning the whole head took ~150. Blank lines before the request line (allowed, and
/// rare) send the head to the full scan.
fn head_has_bare_lf(head: &[u8], fields: &[httparse::Header<'_>]) -> bool {
    if matches!(head.first(), Some(b'\r' | b'\n')) {
        return has_bare_lf(head);
    }
    // An end that is not "\r\n" where a line must end counts as bare: refused, never passed.
    let crlf_at = |lf: usize| lf >= 1 && head.get(lf - 1..=lf) == Some(b"\r\n");
    let start = head.as_ptr() as usize;
    let end = head.len();
    // The blank line, and the line before it (the last field's, or the request line's).
    if !(end >= 4 && crlf_at(end - 1) && crlf_at(end - 3)) {
        return true;
    }
    // Each field name follows the end of the line before it.
    fields
        .iter()
        .any(|field| !crlf_at((field.name.as_ptr() as usize).wrapping_sub(start + 1)))
}

/// Whether a line of `head` ends in LF without CR. Eight bytes at a time: a word with no LF
/// (most of a head) costs one test; only a word that has one is looked at byte by byte.
fn has_bare_lf(head: &[u8]) -> bool {
    const LF: u64 = u64::from_ne_bytes([b'\n'; 8]);
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let bare = |i: usize| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r');
    let mut words = head.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        // Zero where the word has a LF; the test below finds whether any byte is zero.
        let x = u64::from_ne_bytes(bytes) ^ LF;
        if x.wrapping_sub(ONES) & !x & HIGH != 0 && (at..at + 8).any(bare) {
            return true;
        }
        at += 8;
    }
    (at..head.len()).any(bare)
}

/// Comma-separated list elements, trimmed of optional whitespace.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|item| item.trim_ascii())
}

/// Content-Length is 1*DIGIT: no sign, no spaces inside, no list, no overflow.
fn parse_length(value: &[u8]) -> Result<u64, Reject> {
    const BAD: Reject = Reject::BadRequest("invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    value
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(BAD)
}

/// Where a chunked body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Reading hex digits of a chunk size; holds the size so far and the digit count.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions up to CR (ignored, length-limited).
    Extension {
        size: u64,
        len: u16,
    },
    /// Expecting the LF after the size line's CR.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// In the trailer section; `line` bytes into the current line, `total` bytes in all.
    Trailer {
        line: u16,
        total: u16,
        cr: bool,
    },
    Done,
}

/// Longest chunk extension or trailer section accepted.
const MAX_EXTENSION: u16 = 1024;
const MAX_TRAILERS: u16 = 8 * 1024;

impl Chunked {
    pub(crate) fn new() -> Chunked {
        Chunked::Size { size: 0, digits: 0 }
    }

    /// Decodes from `input` into `out`, appending the trailer section's bytes (fields and the
    /// final CRLF, at most [`MAX_TRAILERS`]) to `trailers`. Returns (input consumed, output
    /// produced); stops when `out` is full, `input` is used up, or the body ends
    /// ([`Chunked::Done`]).
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut [u8],
        trailers: &mut Vec<u8>,
    ) -> Result<(usize, usize), Reject> {
        const BAD_SIZE: Reject = Reject::BadRequest("invalid chunk size");
        const BAD_FRAMING: Reject = Reject::BadRequest("invalid chunked framing");
        let (mut i, mut o) = (0, 0);
        while i < input.len() {
            let byte = input[i];
            *self = match *self {
                Chunked::Size { size, digits } => match hex(byte) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(BAD_SIZE);
                        }
                        Chunked::Size {
                            size: size << 4 | u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(BAD_SIZE),
                    None if byte == b'\r' => Chunked::SizeLf { size },
                    None if byte == b';' || byte == b' ' || byte == b'\t' => {
                        Chunked::Extension { size, len: 0 }
                    }
                    None => return Err(BAD_SIZE),
                },
                Chunked::Extension { size, len } => match byte {
                    b'\r' => Chunked::SizeLf { size },
                    b'\n' => return Err(BAD_FRAMING),
                    _ if len >= MAX_EXTENSION => {
                        return Err(Reject::BadRequest("chunk extension too long"));
                    }
                    0..=8 | 10..=31 | 127 => return Err(BAD_FRAMING),
                    _ => Chunked::Extension { size, len: len + 1 },
                },
                Chunked::SizeLf { size } => match byte {
                    b'\n' if size == 0 => Chunked::Trailer {
                        line: 0,
                        total: 0,
                        cr: false,
                    },
                    b'\n' => Chunked::Data { left: size },
                    _ => return Err(BAD_FRAMING),
                },
                Chunked::Data { left } => {
                    if o == out.len() {
                        return Ok((i, o));
                    }
                    let n = (left.min((input.len() - i) as u64) as usize).min(out.len() - o);
                    out[o..o + n].copy_from_slice(&input[i..i + n]);
                    o += n;
                    i += n;
                    let left = left - n as u64;
                    *self = if left == 0 {
                        Chunked::DataCr
                    } else {
                        Chunked::Data { left }
                    };
                    continue;
                }
                Chunked::DataCr => match byte {
                    b'\r' => Chunked::DataLf,
                    _ => return Err(BAD_FRAMING),
                },
                Chunked::DataLf => match byte {
                    b'\n' => Chunked::Size { size: 0, digits: 0 },
                    _ => return Err(BAD_FRAMING),
                },
                Chunked::Trailer { line, total, cr } => {
                    if total >= MAX_TRAILERS {
                        return Err(Reject::HeadTooLarge);
                    }
                    trailers.push(byte);
                    match (byte, cr) {
                        (b'\n', true) if line == 0 => Chunked::Done,
                        (b'\n', true) => Chunked::Trailer {
                            line: 0,
                            total: total + 1,
                            cr: false,
                        },
                        (b'\r', false) => Chunked::Trailer {
                            line,
                            total: total + 1,
                            cr: true,
                        },
                        (b'\n', false) | (_, true) => return Err(BAD_FRAMING),
                        (0..=8 | 10..=31 | 127, false) => return Err(BAD_FRAMING),
                        (_, false) => Chunked::Trailer {
                            line: line + 1,
                            total: total + 1,
                            cr: false,
                        },
                    }
                }
                Chunked::Done => return Ok((i, o)),
            };
            i += 1;
            if *self == Chunked::Done {
                return Ok((i, o));
            }
        }
        Ok((i, o))
    }
}

/// The fields of a chunked body's trailer section (as [`Chunked::decode`] collected it).
pub(crate) fn parse_trailers<'b, 'h>(
    section: &'b [u8],
    fields: &'h mut [httparse::Header<'b>],
) -> Result<&'h [httparse::Header<'b>], Reject> {
    const BAD: Reject = Reject::BadRequest("invalid trailer field");
    match httparse::parse_headers(section, fields) {
        Ok(httparse::Status::Complete((_, fields))) => Ok(fields),
        Err(httparse::Error::TooManyHeaders) => Err(Reject::HeadTooLarge),
        _ => Err(BAD),
    }
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Appends a decimal number without the formatting machinery.
/// How a response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// No length field: a status that has no body (1xx, 204).
    Omitted,
    /// `content-length`.
    Known(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Neither: the body runs until the connection closes (HTTP/1.0, unknown length).
    UntilClose,
}

/// A status whose responses never carry a body: 1xx, 204, 304 (RFC 9110 §6.4.1).
pub(crate) fn bodyless(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

impl Length {
    /// How a response with `status` is framed, its body `len` bytes long (`None`: not known)
    /// and the request HTTP/1.`minor`. A 304 says `content-length: 0`; other bodyless
    /// statuses have no length field.
    pub(crate) fn of(status: u16, len: Option<u64>, minor: u8) -> Length {
        match len {
            _ if status == 304 => Length::Known(0),
            _ if bodyless(status) => Length::Omitted,
            Some(n) => Length::Known(n),
            // Unknown: chunked for HTTP/1.1; an HTTP/1.0 client reads until the close.
            None if minor == 1 => Length::Chunked,
            None => Length::UntilClose,
        }
    }
}

/// A response head, as the connection loop decided it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseHead<'a> {
    pub(crate) status: u16,
    pub(crate) reason: &'a str,
    pub(crate) length: Length,
    /// Send `connection: close` (else, to HTTP/1.0, `connection: keep-alive`).
    pub(crate) close: bool,
    /// The request's minor version.
    pub(crate) minor: u8,
}

impl ResponseHead<'_> {
    /// Appends the head to `out`: the status line, the handler's fields except the framing
    /// ones this head decides (`content-length`, `transfer-encoding`, `connection`, except
    /// on a 101, whose `connection: upgrade` is the handler's), a `date` unless the handler
    /// set one, the framing, and the blank line.
    pub(crate) fn encode<'f>(
        &self,
        fields: impl Iterator<Item = (&'f str, &'f str)>,
        out: &mut Vec<u8>,
    ) {
        self.status_line(out);
        let mut has_date = false;
        for (name, value) in fields {
            let framing = matches!(name, "content-length" | "transfer-encoding");
            // A 101 has no body, so no content-type either (http-types adds a default one).
            let switching = self.status == 101;
            if framing
                || (name == "connection" && !switching)
                || (name == "content-type" && switching)
            {
                continue;
            }
            has_date |= name == "date";
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.finish(has_date, out);
    }

    /// [`ResponseHead::encode`] with the handler's fields already encoded (`name: value\r\n`
    /// each, none of them a framing one): the lean path's.
    pub(crate) fn encode_raw_fields(&self, fields: &[u8], out: &mut Vec<u8>) {
        self.status_line(out);
        out.extend_from_slice(fields);
        let has_date = fields
            .split(|&b| b == b'\n')
            .any(|line| line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"date:"));
        self.finish(has_date, out);
    }

    fn status_line(&self, out: &mut Vec<u8>) {
        // The server's own version, whatever the request's (RFC 9110 §2.5). The commonest
        // lines whole, in one copy.
        let whole: &[u8] = match (self.status, self.reason) {
            (200, "OK") => b"HTTP/1.1 200 OK\r\n",
            (204, "No Content") => b"HTTP/1.1 204 No Content\r\n",
            (304, "Not Modified") => b"HTTP/1.1 304 Not Modified\r\n",
            (404, "Not Found") => b"HTTP/1.1 404 Not Found\r\n",
            _ => {
                out.extend_from_slice(b"HTTP/1.1 ");
                push_decimal(out, u64::from(self.status));
                out.push(b' ');
                out.extend_from_slice(self.reason.as_bytes());
                out.extend_from_slice(b"\r\n");
                return;
            }
        };
        out.extend_from_slice(whole);
    }

    /// After the fields: a `date` unless they had one, the framing, the blank line (the
    /// framing and the blank line written out in one copy).
    fn finish(&self, has_date: bool, out: &mut Vec<u8>) {
        if !has_date {
            out.extend_from_slice(b"date: ");
            date::push_now(out);
            out.extend_from_slice(b"\r\n");
        }
        let mut tail = Tail::default();
        match self.length {
            Length::Known(n) => {
                tail.push(b"content-length: ");
                tail.push_decimal(n);
                tail.push(b"\r\n");
            }
            Length::Chunked => tail.push(b"transfer-encoding: chunked\r\n"),
            Length::Omitted | Length::UntilClose => {}
        }
        if self.close {
            tail.push(b"connection: close\r\n");
        } else if self.minor == 0 {
            tail.push(b"connection: keep-alive\r\n");
        }
        tail.push(b"\r\n");
        out.extend_from_slice(tail.as_slice());
    }
}

pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let (digits, at) = decimal(n);
    out.extend_from_slice(&digits[at..]);
}

/// `n`'s decimal digits: they start at the index returned.
fn decimal(mut n: u64) -> ([u8; 20], usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return (digits, at);
        }
    }
}

/// The end of a response head, gathered on the stack: the framing field, `connection`, the
/// blank line (at most 16 + 20 + 2 + 24 + 2 bytes).
struct Tail {
    bytes: [u8; 64],
    len: usize,
}

impl Default for Tail {
    fn default() -> Tail {
        Tail {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl Tail {
    fn push(&mut self, part: &[u8]) {
        self.bytes[self.len..self.len + part.len()].copy_from_slice(part);
        self.len += part.len();
    }

    fn push_decimal(&mut self, n: u64) {
        let (digits, at) = decimal(n);
        self.push(&digits[at..]);
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Appends a lowercase hexadecimal number (chunk sizes).
pub(crate) fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `Date` header values, formatted at most once a second.
pub(crate) mod date {
    use std::cell::RefCell;

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    /// The wall clock's whole seconds from the coarse clock (the time of the last tick, a few
    /// milliseconds behind at most: plenty for a header that shows seconds), read without the
    /// counter `SystemTime::now` reads and without its `Duration` arithmetic.
    fn seconds() -> u64 {
        // Through libc rather than rustix: rustix finds the vDSO itself and faults under
        // valgrind, which the benchmark counts instructions with.
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec for the call's whole duration, and the
        // clock id is a constant the kernel knows; on any failure `now` stays zero.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
        u64::try_from(now.tv_sec).unwrap_or(0)
    }

    /// Appends the current time as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub(crate) fn push_now(out: &mut Vec<u8>) {
        let now = seconds();
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != now {
                *cache = (now, format(now));
            }
            out.extend_from_slice(&cache.1);
        });
    }

    pub(crate) fn format(secs: u64) -> [u8; 29] {
        const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let mut out = [0u8; 29];
        let two = |n: u64| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
        out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
        out[3..5].copy_from_slice(b", ");
        out[5..7].copy_from_slice(&two(day as u64));
        out[7] = b' ';
        out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
        out[11] = b' ';
        let year = year as u64;
        out[12..14].copy_from_slice(&two(year / 100));
        out[14..16].copy_from_slice(&two(year % 100));
        out[16] = b' ';
        out[17..19].copy_from_slice(&two(hour));
        out[19] = b':';
        out[20..22].copy_from_slice(&two(minute));
        out[22] = b':';
        out[23..25].copy_from_slice(&two(second));
        out[25..29].copy_from_slice(b" GMT");
        out
    }
}

#[cfg(test)]
mod tests;
