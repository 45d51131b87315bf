use super::*;

fn parse(input: &[u8]) -> Result<Option<(Framing, bool, bool, usize)>, Reject> {
    let mut headers = no_headers();
    let head = parse_head(input, &mut headers, 8192)?;
    Ok(head.map(|h| (h.framing, h.keep_alive, h.expect_continue, h.len)))
}

#[test]
fn parses_a_simple_get() {
    let raw = b"GET /hello?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut headers = no_headers();
    let head = parse_head(raw, &mut headers, 8192).unwrap().unwrap();
    assert_eq!(
        (head.method, head.target, head.minor),
        ("GET", "/hello?x=1", 1)
    );
    assert_eq!(head.host, Some(&b"a"[..]));
    assert_eq!(head.framing, Framing::None);
    assert!(head.keep_alive);
    assert_eq!(head.len, raw.len());
}

#[test]
fn partial_heads_ask_for_more() {
    assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    assert_eq!(parse(b"GET / HT"), Ok(None));
}

#[test]
fn keep_alive_rules_by_version() {
    let ka = |raw: &[u8]| parse(raw).unwrap().unwrap().1;
    assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    ));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n"
    ));
}

#[test]
fn rejects_smuggling_shapes() {
    let cases: &[(&[u8], u16)] = &[
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX\0: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
    ];
    for (raw, status) in cases {
        let got = parse(raw).map_err(|r| u16::from(r.status()));
        assert_eq!(
            got,
            Err(*status),
            "{}",
            String::from_utf8_lossy(raw).escape_debug()
        );
    }
}

#[test]
fn oversized_heads_are_431() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 9000));
    assert_eq!(parse(&raw), Err(Reject::HeadTooLarge));
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..70 {
        many.extend(format!("X-{i}: y\r\n").bytes());
    }
    many.extend(b"\r\n");
    assert_eq!(parse(&many), Err(Reject::HeadTooLarge));
    // The request line alone over the limit: the target is too long.
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    assert_eq!(parse(&long), Err(Reject::UriTooLong));
    long.extend(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(parse(&long), Err(Reject::UriTooLong));
}

#[test]
fn framing_and_expect() {
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n";
    assert_eq!(parse(raw).unwrap().unwrap().0, Framing::Length(12));
    assert!(parse(raw).unwrap().unwrap().2);
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
    assert_eq!(parse(raw).unwrap().unwrap().0, Framing::Chunked);
}

fn dechunk(input: &[u8]) -> Result<(Vec<u8>, Chunked, usize), Reject> {
    let mut state = Chunked::new();
    let mut out = vec![0u8; input.len()];
    let (used, produced) = state.decode(input, &mut out, &mut Vec::new())?;
    out.truncate(produced);
    Ok((out, state, used))
}

#[test]
fn decodes_chunks_with_extensions_and_trailers() {
    let body = b"5;name=v\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let (out, state, used) = dechunk(body).unwrap();
    assert_eq!(out, b"hello 0123456789");
    assert_eq!(state, Chunked::Done);
    assert_eq!(&body[used..], b"NEXT");
    // The trailer section is kept for the handler, whatever the splits.
    for split in 1..body.len() {
        let (mut state, mut trailers, mut out) = (Chunked::new(), Vec::new(), [0u8; 64]);
        let mut at = 0;
        while state != Chunked::Done {
            let end = (at + split).min(body.len());
            at += state
                .decode(&body[at..end], &mut out, &mut trailers)
                .unwrap()
                .0;
        }
        assert_eq!(trailers, b"X-T: 1\r\n\r\n", "split {split}");
        let mut fields = [httparse::EMPTY_HEADER; 4];
        let parsed = parse_trailers(&trailers, &mut fields).unwrap();
        assert_eq!((parsed[0].name, parsed[0].value), ("X-T", &b"1"[..]));
    }
    let (mut state, mut trailers) = (Chunked::new(), Vec::new());
    state
        .decode(b"0\r\n\r\n", &mut [0u8; 8], &mut trailers)
        .unwrap();
    assert_eq!((state, &trailers[..]), (Chunked::Done, &b"\r\n"[..]));
    assert!(
        parse_trailers(&trailers, &mut [httparse::EMPTY_HEADER; 4])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn rejects_bad_chunks() {
    for bad in [
        &b"x\r\n"[..],
        b"-1\r\n",
        b"5\r\nhelloX",
        b"11111111111111111\r\n",
        b"5\nhello\r\n",
        b"\r\n",
        b"0\r\nX: y\n\r\n",
    ] {
        assert!(
            dechunk(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad).escape_debug()
        );
    }
}

#[test]
fn response_heads_frame_the_body_and_skip_handler_framing() {
    let head = ResponseHead {
        status: 200,
        reason: "OK",
        length: Length::Known(5),
        close: false,
        minor: 1,
    };
    let mut out = Vec::new();
    let fields = [("content-length", "99"), ("date", "x"), ("x-a", "1")];
    head.encode(fields.into_iter(), &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\ndate: x\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
    );
    let head = ResponseHead {
        length: Length::UntilClose,
        close: true,
        minor: 0,
        ..head
    };
    out.clear();
    head.encode([("date", "x")].into_iter(), &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\ndate: x\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn later_http_1_minor_versions_become_1_1() {
    let mut raw = b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec();
    assert_eq!(parse(&raw), Err(Reject::UnsupportedVersion));
    assert!(downgrade_minor(&mut raw));
    assert!(raw.starts_with(b"GET / HTTP/1.1\r\n"));
    assert!(parse(&raw).unwrap().is_some());
    let mut two = b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec();
    assert!(!downgrade_minor(&mut two));
    let mut partial = b"GET / HTTP/1.2".to_vec();
    assert!(!downgrade_minor(&mut partial));
}

#[test]
fn numbers_without_fmt() {
    let mut out = Vec::new();
    push_decimal(&mut out, 0);
    out.push(b' ');
    push_decimal(&mut out, 18_446_744_073_709_551_615);
    out.push(b' ');
    push_hex(&mut out, 0x1f);
    assert_eq!(out, b"0 18446744073709551615 1f");
}

#[test]
fn formats_http_dates() {
    assert_eq!(&date::format(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(&date::format(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(
        &date::format(1_709_210_096),
        b"Thu, 29 Feb 2024 12:34:56 GMT"
    );
}

/// The `Date` written now is the wall clock's second (the coarse clock may trail it by a
/// tick, so the second before is allowed too).
#[test]
fn the_date_written_is_now() {
    let second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    for _ in 0..3 {
        let before = second();
        let mut out = Vec::new();
        date::push_now(&mut out);
        let after = second();
        let written = (before - 1..=after).find(|&s| out == date::format(s));
        assert!(
            written.is_some(),
            "{} is not between {} and {}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&date::format(before - 1)),
            String::from_utf8_lossy(&date::format(after))
        );
    }
}

/// A small deterministic generator: the property tests below repeat exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid requests: head plus (chunked) body, with what they must parse to.
const VALID: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a/b?c=d&e HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nX-Empty:\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"\r\nGET /leading-crlf HTTP/1.1\r\nHost: a\r\n\r\n",
];

/// What a whole request parses to, as owned data.
fn digest(input: &[u8]) -> (String, String, u8, Framing, bool, usize, Vec<u8>) {
    let mut headers = no_headers();
    let head = parse_head(input, &mut headers, 8192).unwrap().unwrap();
    let body = match head.framing {
        Framing::None => Vec::new(),
        Framing::Length(n) => input[head.len..head.len + n as usize].to_vec(),
        Framing::Chunked => dechunk(&input[head.len..]).unwrap().0,
    };
    (
        head.method.into(),
        head.target.into(),
        head.minor,
        head.framing,
        head.keep_alive,
        head.len,
        body,
    )
}

/// Feeds `input` to the head parser and chunk decoder the way a connection would, with
/// reads ending at the given `cuts`, and a random-sized output buffer for the body.
fn incremental(
    input: &[u8],
    cuts: &[usize],
    rng: &mut Rng,
) -> (String, String, u8, Framing, bool, usize, Vec<u8>) {
    let mut ends = cuts.iter().copied().chain(std::iter::once(input.len()));
    let head_len = loop {
        let end = ends
            .next()
            .expect("the head completes by the end of the input");
        let mut headers = no_headers();
        match parse_head(&input[..end], &mut headers, 8192).unwrap() {
            Some(head) => break head.len,
            None => assert!(end < input.len(), "complete input reported partial"),
        }
    };
    let mut headers = no_headers();
    let head = parse_head(input, &mut headers, 8192).unwrap().unwrap();
    let mut body = Vec::new();
    match head.framing {
        Framing::None => {}
        Framing::Length(n) => body.extend_from_slice(&input[head_len..head_len + n as usize]),
        Framing::Chunked => {
            let mut state = Chunked::new();
            let mut at = head_len;
            let mut out = [0u8; 16];
            while state != Chunked::Done {
                let end = (at + 1 + rng.below(8)).min(input.len());
                let room = 1 + rng.below(out.len());
                let (used, produced) = state
                    .decode(&input[at..end], &mut out[..room], &mut Vec::new())
                    .unwrap();
                body.extend_from_slice(&out[..produced]);
                at += used;
                assert!(
                    at < input.len() || state == Chunked::Done,
                    "ran out of input"
                );
            }
        }
    }
    (
        head.method.into(),
        head.target.into(),
        head.minor,
        head.framing,
        head.keep_alive,
        head_len,
        body,
    )
}

#[test]
fn every_split_parses_the_same() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for input in VALID {
        let whole = digest(input);
        for cut in 1..input.len() {
            assert_eq!(incremental(input, &[cut], &mut rng), whole, "cut at {cut}");
        }
        for _ in 0..200 {
            let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(input.len())).collect();
            cuts.sort_unstable();
            assert_eq!(incremental(input, &cuts, &mut rng), whole);
        }
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    const ALPHABET: &[u8] = b"GET POST/ HTTP/1.01\r\n:;,=-+0123456789abcdefABCDEF\0\x7f\xff \t";
    for round in 0..20_000 {
        let len = rng.below(200);
        let mut input: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(4) == 0 {
                    rng.next() as u8
                } else {
                    ALPHABET[rng.below(ALPHABET.len())]
                }
            })
            .collect();
        if round % 2 == 0 {
            // Mutate a valid request instead of starting from nothing.
            input = VALID[rng.below(VALID.len())].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(input.len());
                input[at] = ALPHABET[rng.below(ALPHABET.len())];
            }
        }
        let mut headers = no_headers();
        let _ = parse_head(&input, &mut headers, 8192);
        let mut state = Chunked::new();
        let mut out = [0u8; 64];
        let mut at = 0;
        while at < input.len() && state != Chunked::Done {
            match state.decode(&input[at..], &mut out, &mut Vec::new()) {
                Ok((0, 0)) | Err(_) => break,
                Ok((used, _)) => at += used,
            }
        }
    }
}

/// The plain definition the bare-LF checks are held to: an LF at the start or after a byte
/// other than CR.
fn bare_lf_byte_by_byte(head: &[u8]) -> bool {
    (0..head.len()).any(|i| head[i] == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// The word-at-a-time scan for a bare LF agrees with a byte-by-byte one on every placement
/// of LF and CR in heads of every length up to 40, and on pseudo-random bytes.
#[test]
fn the_bare_lf_scan_agrees_with_the_plain_one() {
    for len in 0..40 {
        for at in 0..len {
            for before in [b'\r', b'a', 0x8a, 0x0b] {
                let mut head = vec![b'x'; len];
                head[at] = b'\n';
                if at > 0 {
                    head[at - 1] = before;
                }
                assert_eq!(has_bare_lf(&head), bare_lf_byte_by_byte(&head), "{head:?}");
            }
        }
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let head: Vec<u8> = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                [b'\r', b'\n', b'a', (state >> 56) as u8][(state & 3) as usize]
            })
            .collect();
        assert_eq!(has_bare_lf(&head), bare_lf_byte_by_byte(&head), "{head:?}");
    }
}

/// The check that looks only where lines end agrees with a scan of every byte, on heads built
/// from every choice of CRLF or bare LF for each line (blank lines before the request line
/// too), and on heads whose bytes were replaced at random by CR, LF or a letter: whatever
/// httparse completes, a bare LF in it is refused.
#[test]
fn a_bare_lf_is_found_wherever_a_line_ends() {
    let lines: [&[u8]; 4] = [
        b"GET /a?b HTTP/1.1",
        b"Host: x",
        b"A: 1 ",
        b"Content-Length: 0",
    ];
    for fields in 1..lines.len() {
        for leading in 0..3usize {
            // One bit per line end: the leading blank lines, the request line, each field, the
            // blank line that ends the head.
            let ends = leading + fields + 2;
            for bare in 0..1u32 << ends {
                let mut head = Vec::new();
                let mut end = 0;
                let mut push_end = |head: &mut Vec<u8>| {
                    head.extend_from_slice(if bare >> end & 1 == 1 { b"\n" } else { b"\r\n" });
                    end += 1;
                };
                for _ in 0..leading {
                    push_end(&mut head);
                }
                for line in &lines[..=fields] {
                    head.extend_from_slice(line);
                    push_end(&mut head);
                }
                push_end(&mut head);
                let mut storage = no_headers();
                let parsed = parse_head(&head, &mut storage, 8192);
                let text = String::from_utf8_lossy(&head).escape_debug().to_string();
                if bare == 0 {
                    assert!(matches!(parsed, Ok(Some(_))), "{text}");
                } else {
                    assert!(
                        matches!(parsed, Err(Reject::BadRequest("bare LF line ending"))),
                        "{text}"
                    );
                }
            }
        }
    }
    let valid = b"GET /a HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 22\r\n\r\n";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut completed = 0;
    for _ in 0..20_000 {
        let mut head = valid.to_vec();
        for _ in 0..3 {
            let at = rng.below(head.len());
            head[at] = [b'\r', b'\n', b'a', b' '][rng.below(4)];
        }
        let mut fields = no_headers();
        let mut request = httparse::Request::new(&mut []);
        if let Ok(httparse::Status::Complete(len)) =
            request.parse_with_uninit_headers(&head, &mut fields)
        {
            completed += 1;
            let head = &head[..len];
            assert_eq!(
                head_has_bare_lf(head, request.headers),
                bare_lf_byte_by_byte(head),
                "{}",
                String::from_utf8_lossy(head).escape_debug()
            );
        }
    }
    assert!(completed > 1000, "only {completed} heads were complete");
}
