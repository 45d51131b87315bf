//! [`Options`]: the HTTP server's settings, apart from the core's ([`crate::Config`]).

use std::path::PathBuf;
use std::time::Duration;

/// The HTTP server's settings. `Options::default()` holds every default;
/// [`crate::Server::with_options`] takes a whole one, and each builder method
/// (`header_timeout`, …) sets one field. The core's settings (timeouts of a restart, the
/// process model, the state) are [`crate::Config`], set on the [`crate::Baton`].
///
/// ```
/// let mut options = baton::http::Options::default();
/// assert_eq!(options.keep_alive_timeout, std::time::Duration::from_secs(60));
/// options.max_body_bytes = 1 << 20;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// The longest a client may take to send a request head once it started one. Default: 10 s.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests. Default: 60 s.
    pub keep_alive_timeout: Duration,
    /// How long a drain leaves an idle keep-alive connection open before closing it, so that a
    /// request the client already sent is still answered. Default: 500 ms.
    pub idle_grace: Duration,
    /// The largest request head (request line and header fields); larger ones are answered
    /// 431. At least 64. Default: 16 KiB.
    pub max_head_bytes: usize,
    /// The largest request body; larger ones are answered 413. Default: 16 MiB.
    pub max_body_bytes: u64,
    /// How long a client may keep a response write waiting (it stopped reading) before the
    /// connection is reset. Default: 30 s.
    pub write_timeout: Duration,
    /// How long a request body may stall (no byte arrives) while it is read; the request then
    /// fails with 408 and the connection closes. Default: 30 s.
    pub body_timeout: Duration,
    /// PEM certificate chain and private key for `tls:` listeners (feature `tls`). Default: none.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Serve with async-h1's codec instead of baton's own (feature `async-h1`, for comparison).
    /// Default: `false`.
    pub async_h1: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            idle_grace: Duration::from_millis(500),
            max_head_bytes: 16 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            write_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            tls_files: None,
            async_h1: false,
        }
    }
}
