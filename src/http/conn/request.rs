//! Building an `http_types::Request` from a parsed head.

use std::str::FromStr;

use http_types::headers::HeaderName;
use http_types::{Method, Request, Url, Version};

use crate::http::codec::{self, Reject};

/// A header or trailer field's value as text: ASCII only, else `what` is named in the 400.
pub(super) fn ascii_value<'v>(value: &'v [u8], what: &'static str) -> Result<&'v str, Reject> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| v.is_ascii())
        .ok_or(Reject::BadRequest(what))
}

/// Per-connection state for building requests cheaply: the `Url` of the last Host is reused
/// (cloned, then path and query set) instead of parsing a formatted string each time, and the
/// last request's whole `Url` is cloned as it is when the next asks for the same target (a
/// keep-alive client polling one resource, say), skipping the path's parse.
pub(super) struct Requests {
    base: Option<(Vec<u8>, Url)>,
    /// The last origin-form target and the `Url` it made (under `base`'s Host).
    last: Option<(String, Url)>,
    pub(super) peer: String,
    pub(super) local_text: String,
}

impl Requests {
    pub(super) fn new(peer: String, local_text: String) -> Requests {
        Requests {
            base: None,
            last: None,
            peer,
            local_text,
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
        let Requests {
            base,
            last,
            local_text,
            ..
        } = self;
        let host = head.host.unwrap_or(local_text.as_bytes());
        let same_host = base.as_ref().is_some_and(|(cached, _)| cached == host);
        let url = match last {
            Some((target, url)) if same_host && target == head.target => url.clone(),
            _ => url(base, last, host, head.target, method)?,
        };
        let mut request = Request::new(method, url);
        request.set_version(Some(if head.minor == 0 {
            Version::Http1_0
        } else {
            Version::Http1_1
        }));
        // As `String`s: `ToString` clones those as they are, where a `&String` would go
        // through the formatting machinery.
        request.set_peer_addr(Some(self.peer.clone()));
        request.set_local_addr(Some(self.local_text.clone()));
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
    /// other target or Host builds its own.
    #[test]
    fn a_repeated_target_gets_the_same_url_and_nothing_else_does() {
        let mut requests = Requests::new("1.2.3.4:5".into(), "127.0.0.1:80".into());
        let url = |requests: &mut Requests, target, host| {
            requests
                .build(&head(target, host))
                .unwrap()
                .url()
                .to_string()
        };
        let cases = [
            ("/a?x=1", &b"one"[..], "http://one/a?x=1"),
            ("/a?x=1", b"one", "http://one/a?x=1"),
            ("/a?x=2", b"one", "http://one/a?x=2"),
            ("/a", b"one", "http://one/a"),
            ("/a", b"two:8080", "http://two:8080/a"),
            ("/a", b"one", "http://one/a"),
            ("http://three/b", b"one", "http://three/b"),
            ("/a", b"one", "http://one/a"),
        ];
        for (target, host, expected) in cases {
            assert_eq!(
                url(&mut requests, target, host),
                expected,
                "{target} {host:?}"
            );
        }
    }
}
