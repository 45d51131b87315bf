//! Building an `http_types::Request` from a parsed head.

use std::str::FromStr;

use http_types::{Method, Request, Url, Version};

use crate::codec::{self, Reject};

/// A header or trailer field's value as text: ASCII only, else `what` is named in the 400.
pub(super) fn ascii_value<'v>(value: &'v [u8], what: &'static str) -> Result<&'v str, Reject> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| v.is_ascii())
        .ok_or(Reject::BadRequest(what))
}

/// Per-connection state for building requests cheaply: the `Url` of the last Host is reused
/// (cloned, then path and query set) instead of parsing a formatted string each time.
pub(super) struct Requests {
    base: Option<(Vec<u8>, Url)>,
    pub(super) peer: String,
    pub(super) local_text: String,
}

impl Requests {
    pub(super) fn new(peer: String, local_text: String) -> Requests {
        Requests {
            base: None,
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
        let method = Method::from_str(head.method).map_err(|_| Reject::NotImplemented("method"))?;
        let host = head.host.unwrap_or(self.local_text.as_bytes());
        let mut url = match &self.base {
            Some((cached, url)) if cached == host => url.clone(),
            _ => {
                let text =
                    std::str::from_utf8(host).map_err(|_| Reject::BadRequest("invalid Host"))?;
                if text.contains(['/', '?', '#', '@']) {
                    return Err(Reject::BadRequest("invalid Host"));
                }
                let url = Url::parse(&format!("http://{text}/"))
                    .map_err(|_| Reject::BadRequest("invalid Host"))?;
                self.base = Some((host.to_vec(), url.clone()));
                url
            }
        };
        let target = head.target;
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
        let mut request = Request::new(method, url);
        request.set_version(Some(if head.minor == 0 {
            Version::Http1_0
        } else {
            Version::Http1_1
        }));
        request.set_peer_addr(Some(&self.peer));
        request.set_local_addr(Some(&self.local_text));
        for header in head.headers {
            let value = ascii_value(header.value, "non-ASCII header value")?;
            request.append_header(header.name, value);
        }
        Ok(request)
    }
}
