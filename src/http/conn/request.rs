//! Building an `http_types::Request` from a parsed head.

use std::str::FromStr;

use http_types::headers::HeaderName;
use http_types::{Method, Request, Url, Version};

use crate::http::codec::{self, Reject};
use crate::io::Address;

/// A header or trailer field's value as text: ASCII only, else `what` is named in the 400.
pub(super) fn ascii_value<'v>(value: &'v [u8], what: &'static str) -> Result<&'v str, Reject> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| v.is_ascii())
        .ok_or(Reject::BadRequest(what))
}

/// The `Url`s last made on this thread, shared by its connections (a `Url` is a function of
/// the Host and the target alone): the `Url` of the last Host is reused (cloned, then path and
/// query set) instead of parsing a formatted string each time, and the last request's whole
/// `Url` is cloned as it is when the next asks for the same target (a keep-alive client
/// polling one resource, or a client opening a connection per request), skipping the parse.
#[derive(Default)]
struct Urls {
    base: Option<(Vec<u8>, Url)>,
    /// The last origin-form target and the `Url` it made (under `base`'s Host).
    last: Option<(String, Url)>,
}

thread_local! {
    static URLS: std::cell::RefCell<Urls> = std::cell::RefCell::default();
}

/// Per-connection state for building requests cheaply: the addresses as text, made once.
pub(super) struct Requests {
    peer: Address,
    local: Address,
    /// The two addresses as requests report them, made for the first request that needs
    /// them (a connection the lean handler serves never does).
    texts: Option<(String, String)>,
}

impl Requests {
    pub(super) fn new(peer: Address, local: Address) -> Requests {
        Requests {
            peer,
            local,
            texts: None,
        }
    }

    pub(super) fn build(&mut self, head: &codec::Head<'_, '_>) -> Result<Request, Reject> {
        // Methods are case-sensitive (RFC 9110 §9.1), and http-types' parser is not: `head`
        // would be taken for HEAD. Every method it knows is upper case.
        if head.method.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(Reject::NotImplemented("method"));
        }
        let method = match head.method {
            // The common ones without http-types' parser (which allocates an upper-case copy).
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::from_str(other).map_err(|_| Reject::NotImplemented("method"))?,
        };
        let Requests { peer, local, texts } = self;
        let (peer_text, local_text) =
            texts.get_or_insert_with(|| (address_text(peer, true), address_text(local, false)));
        let host = head.host.unwrap_or(local_text.as_bytes());
        let url = URLS.with(|urls| {
            let Urls { base, last } = &mut *urls.borrow_mut();
            let same_host = base.as_ref().is_some_and(|(cached, _)| cached == host);
            match last {
                Some((target, url)) if same_host && target == head.target => Ok(url.clone()),
                _ => url(base, last, host, head.target, method),
            }
        })?;
        let mut request = Request::new(method, url);
        request.set_version(Some(if head.minor == 0 {
            Version::Http1_0
        } else {
            Version::Http1_1
        }));
        // As `String`s: `ToString` clones those as they are, where a `&String` would go
        // through the formatting machinery.
        request.set_peer_addr(Some(peer_text.clone()));
        request.set_local_addr(Some(local_text.clone()));
        for (i, header) in head.headers.iter().enumerate() {
            let value = ascii_value(header.value, "non-ASCII header value")?;
            let name = known(header.name).unwrap_or_else(|| HeaderName::from(header.name));
            // `append` looks the name up with a copy of it; a first occurrence needs no lookup.
            let again = head.headers[..i]
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(header.name));
            if again {
                request.append_header(name, value);
            } else {
                request.insert_header(name, value);
            }
        }
        Ok(request)
    }
}

/// An address as requests report it: `1.2.3.4:80` for TCP (IPv4 written out directly: the
/// formatting machinery costs more than the rest of a connection's set-up), `unix` for a Unix
/// socket's client, else the address's own text.
fn address_text(address: &Address, peer: bool) -> String {
    match address {
        Address::Tcp(std::net::SocketAddr::V4(v4)) => {
            let mut text = Vec::with_capacity(21);
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                codec::push_decimal(&mut text, u64::from(octet));
            }
            text.push(b':');
            codec::push_decimal(&mut text, u64::from(v4.port()));
            String::from_utf8(text).unwrap_or_default()
        }
        Address::Tcp(addr) | Address::Udp(addr) if peer => addr.to_string(),
        Address::Unix(_) if peer => "unix".to_owned(),
        other => other.to_string(),
    }
}

/// The `Url` of a request for `target` under `host` (from `base`, the last Host's, if it is
/// the same); an origin-form target's is kept as the `last`.
fn url(
    base: &mut Option<(Vec<u8>, Url)>,
    last: &mut Option<(String, Url)>,
    host: &[u8],
    target: &str,
    method: Method,
) -> Result<Url, Reject> {
    let mut url = match &*base {
        Some((cached, url)) if cached == host => url.clone(),
        _ => {
            let text = std::str::from_utf8(host).map_err(|_| Reject::BadRequest("invalid Host"))?;
            if text.contains(['/', '?', '#', '@']) {
                return Err(Reject::BadRequest("invalid Host"));
            }
            let url = Url::parse(&format!("http://{text}/"))
                .map_err(|_| Reject::BadRequest("invalid Host"))?;
            *base = Some((host.to_vec(), url.clone()));
            *last = None;
            url
        }
    };
    if target.starts_with('/') {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        if path.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(Reject::BadRequest("fragment in the request target"));
        }
        url.set_path(path);
        url.set_query(query);
        *last = Some((target.to_owned(), url.clone()));
    } else if target.starts_with("http://") || target.starts_with("https://") {
        url = Url::parse(target).map_err(|_| Reject::BadRequest("invalid request target"))?;
        // RFC 9110 §4.2.4: userinfo in an http(s) URI is not for a server to accept.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Reject::BadRequest("userinfo in the request target"));
        }
    } else if target == "*" && method == Method::Options {
        // Asterisk-form: the server as a whole; the URL stays at "/".
    } else {
        return Err(Reject::BadRequest("invalid request target"));
    }
    Ok(url)
}

/// The usual request fields, as http-types' constants: a borrowed name, nothing allocated.
const KNOWN: [HeaderName; 20] = {
    use http_types::headers::*;
    [
        HOST,
        ACCEPT,
        ACCEPT_ENCODING,
        ACCEPT_LANGUAGE,
        USER_AGENT,
        CONNECTION,
        CONTENT_LENGTH,
        CONTENT_TYPE,
        TRANSFER_ENCODING,
        COOKIE,
        AUTHORIZATION,
        CACHE_CONTROL,
        ORIGIN,
        REFERER,
        UPGRADE,
        EXPECT,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        PRAGMA,
        TE,
    ]
};

fn known(name: &str) -> Option<HeaderName> {
    KNOWN
        .iter()
        .find(|k| k.as_str().len() == name.len() && k.as_str().eq_ignore_ascii_case(name))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'b>(target: &'b str, host: &'b [u8]) -> codec::Head<'b, 'static> {
        codec::Head {
            method: "GET",
            target,
            minor: 1,
            headers: &[],
            host: Some(host),
            framing: codec::Framing::None,
            keep_alive: true,
            expect_continue: false,
            len: 0,
        }
    }

    /// The last target's `Url` is reused only for the same target under the same Host; any
    /// other target or Host builds its own, on one connection or across two that share the
    /// thread's `Url`s (a request without Host is under its own connection's local address).
    #[test]
    fn a_repeated_target_gets_the_same_url_and_nothing_else_does() {
        let peer = Address::Tcp("1.2.3.4:5".parse().unwrap());
        let mut connections = [80, 81].map(|port| {
            let local = Address::Tcp(format!("127.0.0.1:{port}").parse().unwrap());
            Requests::new(peer.clone(), local)
        });
        let url = |requests: &mut Requests, target, host: Option<&'static [u8]>| {
            let mut head = head(target, b"");
            head.host = host;
            requests.build(&head).unwrap().url().to_string()
        };
        let cases = [
            (0, "/a?x=1", Some(&b"one"[..]), "http://one/a?x=1"),
            (0, "/a?x=1", Some(b"one"), "http://one/a?x=1"),
            (1, "/a?x=1", Some(b"one"), "http://one/a?x=1"),
            (1, "/a?x=2", Some(b"one"), "http://one/a?x=2"),
            (0, "/a?x=2", Some(b"one"), "http://one/a?x=2"),
            (0, "/a", Some(b"one"), "http://one/a"),
            (1, "/a", Some(b"two:8080"), "http://two:8080/a"),
            (0, "/a", Some(b"one"), "http://one/a"),
            (0, "http://three/b", Some(b"one"), "http://three/b"),
            (1, "/a", Some(b"one"), "http://one/a"),
            (0, "/a", None, "http://127.0.0.1/a"),
            (1, "/a", None, "http://127.0.0.1:81/a"),
            (1, "/a", None, "http://127.0.0.1:81/a"),
            (0, "/a", None, "http://127.0.0.1/a"),
        ];
        for (connection, target, host, expected) in cases {
            assert_eq!(
                url(&mut connections[connection], target, host),
                expected,
                "{connection} {target} {host:?}"
            );
        }
    }

    /// Addresses as requests report them: what `Display` makes of them, but for a Unix
    /// socket's client (`unix`).
    #[test]
    fn addresses_read_as_their_display() {
        for text in [
            "1.2.3.4:5",
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "[::1]:8080",
        ] {
            let addr: std::net::SocketAddr = text.parse().unwrap();
            assert_eq!(address_text(&Address::Tcp(addr), true), addr.to_string());
            assert_eq!(address_text(&Address::Tcp(addr), false), addr.to_string());
        }
        let unix = Address::Unix("/run/x.sock".into());
        assert_eq!(address_text(&unix, true), "unix");
        assert_eq!(address_text(&unix, false), unix.to_string());
    }
}
