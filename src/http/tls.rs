//! TLS for listeners requested as `tls:host:port` (cargo feature `tls`): rustls with the ring
//! provider, TLS 1.2 and 1.3, ALPN `http/1.1` (`baton::hyper` offers `h2` first). The certificate chain and key are read from
//! PEM files when the server starts, so a restart after replacing the files rotates them, and
//! a successor whose files do not load never reports ready (the old process serves on).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::{self, ServerConfig};
use smol::io::{AsyncRead, AsyncWrite};

use crate::Stream as Conn;

/// Loads `cert` (a PEM chain, leaf first) and `key` (a PEM private key) into an acceptor
/// that offers the protocols `alpn`, most preferred first.
pub(crate) fn acceptor(cert: &Path, key: &Path, alpn: &[&[u8]]) -> io::Result<TlsAcceptor> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS {what} {}: {e}", path.display()),
        )
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("certificate", cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad("configuration for", cert, &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad("key does not fit the certificate, or is unusable:", key, &e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TCP connection under a TLS session: the same registration with the connections' epoll
/// as a plain connection's (no second registration, no duplicate fd), shared so that waiting
/// for readability does not need the session's lock.
#[derive(Debug, Clone)]
pub(crate) struct Tcp(pub(crate) Arc<Conn>);

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written straight to the socket: nothing is held here.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.shutdown_write())
    }
}

/// An established TLS session over a client connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) tcp: Arc<Conn>,
    pub(crate) tls: Mutex<futures_rustls::server::TlsStream<Tcp>>,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, futures_rustls::server::TlsStream<Tcp>> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    /// Writes out the records rustls still holds.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    /// Plaintext already decrypted and waiting, so a wait for readability would be wrong.
    pub(crate) fn has_plaintext(&self) -> bool {
        let mut tls = self.lock();
        let (_, session) = tls.get_mut();
        session
            .process_new_packets()
            .map_or(true, |state| state.plaintext_bytes_to_read() > 0)
    }

    /// Sends close_notify (best effort: the socket does not block) before the TCP FIN.
    pub(crate) fn close_notify(&self) {
        let mut tls = self.lock();
        let (_, session) = tls.get_mut();
        session.send_close_notify();
        let mut socket = Direct(&self.tcp);
        while session.wants_write() {
            if session.write_tls(&mut socket).is_err() {
                break;
            }
        }
    }
}

/// Blocking-style writes straight to the socket (it is non-blocking: `WouldBlock` ends them).
struct Direct<'a>(&'a Conn);

impl io::Write for Direct<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_now(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
