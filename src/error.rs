//! Errors that say what was wrong and keep their cause: `io::Error`s whose message names the
//! input, with the underlying error as the source.

use std::error::Error;
use std::fmt;
use std::io;

/// A message with its cause kept as the source.
#[derive(Debug)]
struct Cause(String, Box<dyn Error + Send + Sync>);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.1)
    }
}

/// `message: source`, of `kind`, with `source` kept.
pub(crate) fn context(
    kind: io::ErrorKind,
    message: String,
    source: impl Into<Box<dyn Error + Send + Sync>>,
) -> io::Error {
    io::Error::new(kind, Cause(message, source.into()))
}

/// Bad input (an address, `LISTENER`, an fd) and why, with its cause.
pub(crate) fn invalid(
    message: String,
    source: impl Into<Box<dyn Error + Send + Sync>>,
) -> io::Error {
    context(io::ErrorKind::InvalidInput, message, source)
}

/// Bad input, with nothing underneath.
pub(crate) fn invalid_msg(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}
