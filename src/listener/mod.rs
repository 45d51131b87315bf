//! Listening sockets: created fresh, inherited from the process that started this one
//! (`LISTENER`), or handed over by systemd socket activation (`LISTEN_FDS`).
//!
//! The inheritance protocol is the one of the Go original: the parent sets `LISTENER` to
//! `{"addr":"127.0.0.1:8080","fd":3,"filename":"tcp:127.0.0.1:8080->"}` and passes the socket
//! as that fd; with several listeners, `LISTENER` is a JSON array of such objects, fds 3, 4, ...
//! baton adds `"ready_fd"`, the write end of the readiness pipe (see [`crate::handoff`]); Go
//! ignores unknown keys, so either side can read the other's variable.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_io::Async;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};

use crate::config::timing::ACCEPT_BACKOFF;
use crate::error::{invalid, invalid_msg};
use crate::io::edge::{Edge, Watched};
use crate::io::ready::Readiness;

mod inherit;

pub(crate) use inherit::{
    Checked, Description, ENDLESS_ENV, Inheritance, SUPERVISOR_ENV, claim_channel,
    scrub_environment, set_cloexec,
};

/// The environment variable that carries inherited listeners' descriptions.
pub const LISTENER_ENV: &str = "LISTENER";
/// systemd socket activation's variables; never passed on to a successor.
pub(crate) const ACTIVATION_ENV: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];
/// Where inherited and activated fds start.
pub(crate) const FIRST_FD: RawFd = 3;
/// Most listeners one server takes (and hands over).
pub(crate) const MAX_LISTENERS: usize = 32;

/// Backlog asked of `listen(2)`; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

pub use crate::io::Address;

/// A requested address, parsed.
#[derive(Debug, Clone)]
enum Spec {
    Tcp(Vec<SocketAddr>),
    Unix(PathBuf),
    Udp(Vec<SocketAddr>),
}

/// Flags for accepted sockets: non-blocking (the reactor's), close-on-exec.
fn accept_flags() -> SocketFlags {
    SocketFlags::NONBLOCK | SocketFlags::CLOEXEC
}

/// What a program may know of a listener before it serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenerInfo {
    /// Its local address.
    pub addr: Address,
    /// Created here, inherited, or socket-activated.
    pub origin: Origin,
    /// Asked for as `tls:host:port`.
    pub tls: bool,
}

/// A listening socket of either kind, or a UDP socket (which is never accepted on: its
/// program reads it, see `crate::Datagrams`).
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(Async<TcpListener>),
    Unix(Async<UnixListener>),
    Udp(OwnedFd),
}

/// An accepted connection (non-blocking, close-on-exec; TCP with `TCP_NODELAY`) and its
/// peer's address.
pub(crate) type Accepted = (OwnedFd, Address);

impl Socket {
    /// Accepts one connection if one is waiting; otherwise registers for the next. After an
    /// `EAGAIN` only the reactor is asked, until it reports the listener readable.
    pub(crate) fn poll_accept(
        &self,
        ready: &Readiness,
        watch: Option<&Watched>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Accepted>> {
        let attempt = || self.try_accept();
        // Watched by the connections' epoll (woken by it, and found by its look between
        // tasks); else through async-io's reactor.
        if let Some(watch) = watch {
            return watch.poll(cx, attempt);
        }
        let readable = |cx: &mut Context<'_>| match self {
            Socket::Tcp(l) => l.poll_readable(cx),
            Socket::Unix(l) => l.poll_readable(cx),
            Socket::Udp(_) => Poll::Pending,
        };
        if let Socket::Udp(_) = self {
            return Poll::Pending;
        }
        ready.poll(cx, readable, attempt)
    }

    /// Accepts one connection if one is waiting (`WouldBlock` if none).
    fn try_accept(&self) -> io::Result<Accepted> {
        match self {
            // accept4 makes the socket non-blocking itself: no ioctl(FIONBIO) after it.
            Socket::Tcp(l) => rustix::net::acceptfrom_with(l, accept_flags())
                .map_err(io::Error::from)
                .and_then(|(fd, peer)| {
                    // Answers are written whole; Nagle would only delay them.
                    rustix::net::sockopt::set_tcp_nodelay(&fd, true)?;
                    let peer = peer
                        .and_then(|p| SocketAddr::try_from(p).ok())
                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                    Ok((fd, Address::Tcp(peer)))
                }),
            Socket::Unix(l) => rustix::net::accept_with(l, accept_flags())
                .map_err(io::Error::from)
                .map(|fd| (fd, Address::Unix(PathBuf::new()))),
            // (Never asked: UDP sockets are skipped.)
            Socket::Udp(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Unix(l) => l.as_fd(),
            Socket::Udp(s) => s.as_fd(),
        }
    }
}

/// How a listener came to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Bound by this process.
    Created,
    /// Passed by the parent process through `LISTENER`.
    Inherited,
    /// Passed by systemd through `LISTEN_FDS`.
    Activated,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Origin {
    /// `created`, `inherited` or `socket-activated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Created => "created",
            Origin::Inherited => "inherited",
            Origin::Activated => "socket-activated",
        }
    }
}

/// A listening socket, ready to serve, and where it came from.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The address it was requested with; successors are told this one.
    pub(crate) requested: String,
    pub(crate) socket: Socket,
    pub(crate) local: Address,
    pub(crate) origin: Origin,
    /// Requested as `tls:host:port`: connections start with a TLS handshake.
    pub(crate) tls: bool,
    /// Whether an accept may find a connection without waiting (through async-io, if the
    /// edge cannot watch it).
    ready: Readiness,
    /// Its registration with the connections' epoll, while this process accepts.
    watch: std::cell::RefCell<Option<Watched>>,
}

/// What [`Listener::bind_all`] found and made: the listeners, and the other fds a parent
/// passed (the readiness pipe, the relay, a worker's control channel).
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) listeners: Vec<Listener>,
    pub(crate) ready: Option<OwnedFd>,
    pub(crate) relay: Option<OwnedFd>,
    pub(crate) control: Option<OwnedFd>,
}

/// Where one requested address's listener comes from: an fd handed to this process (validated,
/// with its bound address), or nothing (create it).
type Source = Option<(Checked, Address, Origin)>;

impl Listener {
    /// For each requested address: the listener `LISTENER` describes for it, else a
    /// socket-activated one bound to it (or named like it), else a new one. Also returns the
    /// readiness pipe and the connection relay a parent passed, if any.
    pub(crate) fn bind_all(addrs: &[String], inheritance: &Inheritance) -> io::Result<Bound> {
        if addrs.is_empty() {
            return Err(invalid_msg("no address to listen on".into()));
        }
        if addrs.len() > MAX_LISTENERS {
            return Err(invalid_msg(format!(
                "at most {MAX_LISTENERS} listeners, {} requested",
                addrs.len()
            )));
        }
        // Check every handed-over fd before taking ownership of any.
        let mut plan: Vec<(&String, Option<Spec>, Source)> = Vec::with_capacity(addrs.len());
        let mut used: Vec<RawFd> = Vec::new();
        for addr in addrs {
            // A name (LISTEN_FDNAMES) need not parse as an address; anything else must.
            let spec = spec(addr);
            let described = inheritance
                .descriptions
                .iter()
                .find(|d| &d.addr == addr && !used.contains(&d.fd));
            let source = match described {
                Some(description) => {
                    let what = format!("{LISTENER_ENV}: fd {}", description.fd);
                    let (checked, local) = inherit::validate_listener(description.fd, &what)?;
                    if spec.as_ref().is_ok_and(|spec| !spec.matches(&local)) {
                        return Err(invalid_msg(format!(
                            "{what} listens on {local}, not on {addr} as \"addr\" says"
                        )));
                    }
                    Some((checked, local, Origin::Inherited))
                }
                None => {
                    inherit::activated_for(addr, spec.as_ref().ok(), &inheritance.activated, &used)?
                }
            };
            let spec = match (&source, spec) {
                (_, Ok(spec)) => Some(spec),
                (Some(_), Err(_)) => None,
                (None, Err(e)) => return Err(e),
            };
            if let Some((checked, ..)) = &source {
                used.push(checked.fd());
            }
            plan.push((addr, spec, source));
        }
        // A listener handed over for an address nobody asked for: say so, naming both, rather
        // than bind beside it (the usual cause: the parent listened on `:8080` and this
        // process asks for `127.0.0.1:8080`, or takes a default address).
        let unused: Vec<&Description> = inheritance
            .descriptions
            .iter()
            .filter(|d| !used.contains(&d.fd))
            .collect();
        if let Some(first) = unused.first() {
            return Err(invalid_msg(format!(
                "{LISTENER_ENV} hands over {:?} (fd {}), but this process asks for {}: ask for \
                 that address (hello --addr {:?}), or take what is handed over \
                 (Server::bind_inherited_or; hello without --addr)",
                first.addr,
                first.fd,
                addrs.join(", "),
                first.addr
            )));
        }
        let ready = inheritance.claim_ready()?;
        let relay = inheritance.claim_relay()?;
        let control = inheritance.claim_control()?;
        inheritance.close_activated_on_exec();
        let mut listeners = Vec::with_capacity(plan.len());
        for (addr, spec, source) in plan {
            let listener = match (source, spec) {
                (Some((checked, local, origin)), _) => adopt(addr, checked, local, origin)?,
                (None, Some(spec)) => create(addr, &spec)?,
                (None, None) => unreachable!("an address without a source was parsed above"),
            };
            listeners.push(listener);
        }
        Ok(Bound {
            listeners,
            ready,
            relay,
            control,
        })
    }

    /// What a successor is told about this listener when it arrives as `fd`.
    pub(crate) fn describe(&self, fd: RawFd) -> Description {
        let filename = match &self.local {
            Address::Tcp(addr) => format!("tcp:{addr}->"),
            Address::Udp(addr) => format!("udp:{addr}->"),
            Address::Unix(path) => format!("unix:{}->", path.display()),
        };
        Description {
            addr: self.requested.clone(),
            fd,
            filename,
            ready_fd: None,
            relay_fd: None,
            control_fd: None,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.socket.as_fd().as_raw_fd()
    }

    /// A duplicate of the socket's fd (CLOEXEC), for handing over.
    pub(crate) fn duplicate(&self) -> io::Result<OwnedFd> {
        Ok(rustix::io::fcntl_dupfd_cloexec(self.socket.as_fd(), 0)?)
    }

    /// The path of a Unix listener, to remove at final shutdown.
    /// What a program may know of it.
    pub(crate) fn info(&self) -> ListenerInfo {
        ListenerInfo {
            addr: self.local.clone(),
            origin: self.origin,
            tls: self.tls,
        }
    }

    pub(crate) fn unix_path(&self) -> Option<&Path> {
        match &self.local {
            Address::Unix(path) => Some(path),
            Address::Tcp(_) | Address::Udp(_) => None,
        }
    }
}

/// The listeners one process accepts from: each accept starts after the listener used last,
/// so none starves the others, and pauses after an error a retry cannot fix at once.
#[derive(Debug)]
pub(crate) struct Listeners {
    all: Vec<Listener>,
    next: std::cell::Cell<usize>,
    backoff: std::cell::Cell<bool>,
}

impl Listeners {
    pub(crate) fn new(all: Vec<Listener>) -> Listeners {
        Listeners {
            all,
            next: std::cell::Cell::new(0),
            backoff: std::cell::Cell::new(false),
        }
    }

    /// Stops watching the listeners while this process does not accept (it drains): the
    /// successor accepts on the same sockets, and each connection it gets would wake this
    /// process too. The next accept watches them again.
    pub(crate) fn unwatch(&self) {
        for listener in &self.all {
            if let Some(watch) = listener.watch.borrow_mut().take() {
                watch.unwatch(listener.socket.as_fd());
            }
        }
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Listener> {
        self.all.iter()
    }

    /// Accepts every connection already in the listeners' queues (at most `most` each),
    /// right before this process closes its copies: when the last copy of a socket closes,
    /// the kernel resets what it has queued, connections whose clients saw them accepted.
    /// Taken here, they are served; what arrives after the close is refused. Returns them
    /// with the listener each came from.
    pub(crate) fn take_queued(&self, most: usize) -> Vec<(usize, Accepted)> {
        let mut queued = Vec::new();
        for (index, listener) in self.all.iter().enumerate() {
            if let Socket::Udp(_) = listener.socket {
                continue;
            }
            let mut taken = 0;
            while taken < most {
                match listener.socket.try_accept() {
                    Ok(accepted) => queued.push((index, accepted)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                taken += 1;
            }
        }
        queued
    }

    pub(crate) fn as_slice(&self) -> &[Listener] {
        &self.all
    }

    /// The next connection from any listener, with the listener it came from. An error that
    /// needs a pause (out of fds or buffers) is returned once, and the next call waits
    /// [`ACCEPT_BACKOFF`] first; any other error concerns one connection only.
    pub(crate) async fn accept(&self, edge: &Arc<Edge>) -> Result<(usize, Accepted), AcceptError> {
        if self.backoff.replace(false) {
            async_io::Timer::after(ACCEPT_BACKOFF).await;
        }
        let accepted = std::future::poll_fn(|cx| self.poll_any(edge, cx)).await;
        match accepted {
            Ok(accepted) => Ok(accepted),
            Err(error) => {
                let pause = matches!(
                    error.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                self.backoff.set(pause);
                Err(AcceptError { error, pause })
            }
        }
    }

    fn poll_any(
        &self,
        edge: &Arc<Edge>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(usize, Accepted)>> {
        let next = self.next.get();
        for offset in 0..self.all.len() {
            let index = (next + offset) % self.all.len();
            let listener = &self.all[index];
            if let Socket::Udp(_) = listener.socket {
                continue;
            }
            let mut watch = listener.watch.borrow_mut();
            if watch.is_none() {
                *watch = edge.watch(listener.socket.as_fd()).ok();
            }
            let socket = &listener.socket;
            if let Poll::Ready(accepted) = socket.poll_accept(&listener.ready, watch.as_ref(), cx) {
                self.next.set(index + 1);
                return Poll::Ready(accepted.map(|connection| (index, connection)));
            }
        }
        Poll::Pending
    }
}

/// A failed accept.
#[derive(Debug)]
pub(crate) struct AcceptError {
    pub(crate) error: io::Error,
    /// Out of fds or buffers: worth reporting, and the next accept pauses first.
    pub(crate) pause: bool,
}

/// Parses `addr`: `unix:/path`, `host:port`, `:port` (every interface, as in Go), or
/// `tls:host:port` (TCP with TLS, with the `tls` feature).
fn spec(addr: &str) -> io::Result<Spec> {
    if let Some(tcp) = addr.strip_prefix("tls:") {
        if !cfg!(feature = "tls") {
            return Err(invalid_msg(format!(
                "address {addr:?}: tls: needs baton's `tls` cargo feature"
            )));
        }
        if tcp.starts_with("unix:") {
            return Err(invalid_msg(format!(
                "address {addr:?}: TLS is for TCP listeners"
            )));
        }
        return resolve(tcp).map(Spec::Tcp);
    }
    if let Some(udp) = addr.strip_prefix("udp:") {
        return resolve(udp).map(Spec::Udp);
    }
    if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(invalid_msg(format!(
                "address {addr:?}: the socket path after unix: is empty"
            )));
        }
        return Ok(Spec::Unix(PathBuf::from(path)));
    }
    resolve(addr).map(Spec::Tcp)
}

impl Spec {
    fn matches(&self, local: &Address) -> bool {
        match (self, local) {
            (Spec::Tcp(candidates), Address::Tcp(local)) => {
                candidates.iter().any(|&c| same_address(c, *local))
            }
            (Spec::Unix(path), Address::Unix(local)) => path == local,
            (Spec::Udp(candidates), Address::Udp(local)) => {
                candidates.iter().any(|&c| same_address(c, *local))
            }
            _ => false,
        }
    }
}

/// Turns `host:port` into socket addresses. `:8080` means every interface, as in Go.
pub(crate) fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let resolved = if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|e| {
            invalid(
                format!("address {addr:?}: the port after ':' must be a number 0-65535"),
                e,
            )
        })?;
        Ok(vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ])
    } else {
        addr.to_socket_addrs().map(Iterator::collect)
    };
    match resolved {
        Ok(list) if !list.is_empty() => Ok(list),
        Ok(_) => Err(invalid_msg(format!("address {addr:?} resolves to nothing"))),
        Err(e) => Err(invalid(
            format!(
                "address {addr:?} is not host:port (try 127.0.0.1:8080, [::1]:8080, :8080 or unix:/path)"
            ),
            e,
        )),
    }
}

fn create(addr: &str, spec: &Spec) -> io::Result<Listener> {
    let failed =
        |e: io::Error| crate::error::context(e.kind(), format!("cannot listen on {addr}"), e);
    match spec {
        Spec::Tcp(candidates) => {
            let mut last_error = None;
            for &candidate in candidates {
                match bind_tcp(candidate) {
                    Ok(socket) => {
                        let local = Address::Tcp(socket.local_addr()?);
                        let socket = Socket::Tcp(Async::new(socket)?);
                        return Ok(listener(addr, socket, local, Origin::Created));
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            Err(failed(
                last_error.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into()),
            ))
        }
        Spec::Udp(candidates) => {
            let mut last_error = None;
            for &candidate in candidates {
                match bind_udp(candidate) {
                    Ok(socket) => {
                        let local = Address::Udp(local_inet(&socket)?);
                        return Ok(listener(addr, Socket::Udp(socket), local, Origin::Created));
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            Err(failed(
                last_error.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into()),
            ))
        }
        Spec::Unix(path) => {
            let socket = Socket::Unix(Async::new(bind_unix(path).map_err(failed)?)?);
            Ok(listener(
                addr,
                socket,
                Address::Unix(path.clone()),
                Origin::Created,
            ))
        }
    }
}

fn listener(requested: &str, socket: Socket, local: Address, origin: Origin) -> Listener {
    let tls = requested.starts_with("tls:");
    Listener {
        requested: requested.to_owned(),
        socket,
        local,
        origin,
        tls,
        ready: Readiness::default(),
        watch: std::cell::RefCell::new(None),
    }
}

/// Takes ownership of an inherited listening socket (checked again, then claimed).
fn adopt(addr: &str, checked: Checked, local: Address, origin: Origin) -> io::Result<Listener> {
    let owned = checked.claim()?;
    let socket = match local {
        Address::Tcp(_) => Socket::Tcp(Async::new(TcpListener::from(owned))?),
        Address::Unix(_) => Socket::Unix(Async::new(UnixListener::from(owned))?),
        Address::Udp(_) => {
            rustix::io::ioctl_fionbio(&owned, true)?;
            Socket::Udp(owned)
        }
    };
    Ok(listener(addr, socket, local, origin))
}

/// A non-blocking, CLOEXEC listening socket with SO_REUSEADDR; `[::]` accepts IPv4 too.
fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let socket = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        sockopt::set_ipv6_v6only(&socket, false)?;
    }
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, BACKLOG)?;
    Ok(TcpListener::from(socket))
}

/// A non-blocking, CLOEXEC UDP socket bound to `addr`; `[::]` takes IPv4 too.
fn bind_udp(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let socket = rustix::net::socket_with(family, SocketType::DGRAM, flags, None)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        sockopt::set_ipv6_v6only(&socket, false)?;
    }
    rustix::net::bind(&socket, &addr)?;
    Ok(socket)
}

/// The IP address a socket is bound to.
fn local_inet(socket: &OwnedFd) -> io::Result<SocketAddr> {
    let local = rustix::net::getsockname(socket)?;
    SocketAddr::try_from(local).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// A Unix listening socket at `path`. A stale socket file (nobody accepting) is replaced; a
/// live one, or a path that is not a socket, is an error.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            let message = format!("{} exists and is not a socket", path.display());
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, message));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                let message = format!("{} is in use: a server is accepting on it", path.display());
                return Err(io::Error::new(io::ErrorKind::AddrInUse, message));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) => return Err(e),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let socket = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
    rustix::net::bind(&socket, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&socket, BACKLOG)?;
    Ok(UnixListener::from(socket))
}

/// Does a socket bound to `local` serve the requested `wanted` address? Port 0 asks for any port;
/// the unspecified addresses of both families are interchangeable (`:8080`).
fn same_address(wanted: SocketAddr, local: SocketAddr) -> bool {
    let ip_matches =
        wanted.ip() == local.ip() || (wanted.ip().is_unspecified() && local.ip().is_unspecified());
    ip_matches && (wanted.port() == 0 || wanted.port() == local.port())
}

#[cfg(test)]
mod tests;
