//! Listening sockets: created fresh, or inherited from the process that started this one.
//!
//! The inheritance protocol is the one of the Go original: the parent sets `LISTENER` to
//! `{"addr":"127.0.0.1:8080","fd":3,"filename":"tcp:127.0.0.1:8080->"}` and passes the socket
//! as that fd. baton adds `"ready_fd"`, the write end of the readiness pipe (see [`crate::handoff`]);
//! Go ignores unknown keys, so either side can read the other's variable.

use std::error::Error;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use async_io::Async;
use rustix::fs::FileType;
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};

/// The environment variable that carries an inherited listener's description.
pub const LISTENER_ENV: &str = "LISTENER";

/// Backlog asked of `listen(2)`; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// One listener as `LISTENER` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Description {
    /// The address the listener was requested with (`:8080`, `127.0.0.1:0`, ...).
    pub(crate) addr: String,
    /// The fd the socket arrives as.
    pub(crate) fd: RawFd,
    /// Go's `os.File` name for the socket, e.g. `tcp:127.0.0.1:8080->`.
    pub(crate) filename: String,
    /// The write end of the readiness pipe, if the parent passed one.
    pub(crate) ready_fd: Option<RawFd>,
}

impl Description {
    /// Parses the value of `LISTENER`.
    pub(crate) fn parse(value: &str) -> io::Result<Description> {
        const SHAPE: &str = r#"{"addr":"127.0.0.1:8080","fd":3,"filename":"..."}"#;
        let json: serde_json::Value = serde_json::from_str(value).map_err(|e| {
            invalid(
                format!("{LISTENER_ENV} is not valid JSON (expected {SHAPE})"),
                e,
            )
        })?;
        let Some(object) = json.as_object() else {
            return Err(invalid_msg(format!(
                "{LISTENER_ENV} must be a JSON object like {SHAPE}"
            )));
        };
        let addr = match object.get("addr") {
            Some(serde_json::Value::String(addr)) => addr.clone(),
            Some(_) => {
                return Err(invalid_msg(format!(
                    "{LISTENER_ENV}: \"addr\" must be a string"
                )));
            }
            None => {
                return Err(invalid_msg(format!(
                    "{LISTENER_ENV}: \"addr\" is missing ({SHAPE})"
                )));
            }
        };
        let fd = match object.get("fd") {
            Some(value) => fd_number(value, "fd")?,
            None => {
                return Err(invalid_msg(format!(
                    "{LISTENER_ENV}: \"fd\" is missing ({SHAPE})"
                )));
            }
        };
        let filename = match object.get("filename") {
            Some(serde_json::Value::String(name)) => name.clone(),
            None | Some(serde_json::Value::Null) => String::new(),
            Some(_) => {
                return Err(invalid_msg(format!(
                    "{LISTENER_ENV}: \"filename\" must be a string"
                )));
            }
        };
        let ready_fd = match object.get("ready_fd") {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(fd_number(value, "ready_fd")?),
        };
        Ok(Description {
            addr,
            fd,
            filename,
            ready_fd,
        })
    }

    /// The JSON text for `LISTENER`.
    pub(crate) fn to_json(&self) -> String {
        let mut object = serde_json::Map::new();
        object.insert("addr".into(), self.addr.clone().into());
        object.insert("fd".into(), self.fd.into());
        object.insert("filename".into(), self.filename.clone().into());
        if let Some(ready_fd) = self.ready_fd {
            object.insert("ready_fd".into(), ready_fd.into());
        }
        serde_json::Value::Object(object).to_string()
    }
}

fn fd_number(value: &serde_json::Value, key: &str) -> io::Result<RawFd> {
    value
        .as_i64()
        .and_then(|n| RawFd::try_from(n).ok())
        .filter(|&n| n >= 0)
        .ok_or_else(|| {
            invalid_msg(format!(
                "{LISTENER_ENV}: \"{key}\" must be a non-negative integer fd number, got {value}"
            ))
        })
}

/// A listening TCP socket, ready to serve, and where it came from.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The address it was requested with; children are told this one.
    pub(crate) requested: String,
    pub(crate) socket: Async<TcpListener>,
    pub(crate) local: SocketAddr,
    /// `true` if it came from `LISTENER`.
    pub(crate) inherited: bool,
    /// The write end of the parent's readiness pipe, to be written once serving.
    pub(crate) ready: Option<OwnedFd>,
}

impl Listener {
    /// The Go original's createOrImportListener: import the listener for `addr` from `LISTENER`
    /// (the variable's value is passed in) if it describes this address, else create it.
    pub(crate) fn create_or_import(addr: &str, inherited: Option<&str>) -> io::Result<Listener> {
        let candidates = resolve(addr)?;
        if let Some(value) = inherited {
            let description = Description::parse(value)?;
            if description.addr == addr {
                return Listener::import(description, &candidates);
            }
        }
        Listener::create(addr, &candidates)
    }

    /// What a child is told about this listener when it arrives as `fd`.
    pub(crate) fn describe(&self, fd: RawFd, ready_fd: Option<RawFd>) -> Description {
        Description {
            addr: self.requested.clone(),
            fd,
            filename: format!("tcp:{}->", self.local),
            ready_fd,
        }
    }

    fn create(addr: &str, candidates: &[SocketAddr]) -> io::Result<Listener> {
        let mut last_error = None;
        for &candidate in candidates {
            match bind(candidate) {
                Ok(socket) => {
                    let local = socket.local_addr()?;
                    return Ok(Listener {
                        requested: addr.to_owned(),
                        socket: Async::new(socket)?,
                        local,
                        inherited: false,
                        ready: None,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        let source = last_error.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into());
        Err(io::Error::new(
            source.kind(),
            Cause(format!("cannot listen on {addr}"), Box::new(source)),
        ))
    }

    fn import(description: Description, candidates: &[SocketAddr]) -> io::Result<Listener> {
        let Description {
            addr, fd, ready_fd, ..
        } = description;
        // SAFETY: `LISTENER` hands this fd number to this process to own, and nothing else in
        // the process has claimed it. It is only borrowed for the checks below, which are
        // plain syscalls: a number that is not open makes them fail with EBADF, nothing more.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let local = validate_listener(borrowed, fd)?;
        if !candidates.iter().any(|&wanted| same_address(wanted, local)) {
            return Err(invalid_msg(format!(
                "{LISTENER_ENV}: fd {fd} listens on {local}, not on {addr} as \"addr\" says"
            )));
        }
        let ready = match ready_fd {
            Some(ready_fd) => {
                // SAFETY: as above, the number comes from `LISTENER` and is ours to check.
                let borrowed = unsafe { BorrowedFd::borrow_raw(ready_fd) };
                validate_pipe(borrowed, ready_fd)?;
                Some(ready_fd)
            }
            None => None,
        };
        // Both checks passed: take ownership, once, and keep both out of later children.
        // SAFETY: fd is open (fstat succeeded), a listening socket, and handed to this process
        // by `LISTENER`; no other owner exists in this process.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC)?;
        let ready = match ready {
            Some(ready_fd) => {
                // SAFETY: validated above as an open pipe handed to us by `LISTENER`.
                let owned = unsafe { OwnedFd::from_raw_fd(ready_fd) };
                rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC)?;
                Some(owned)
            }
            None => None,
        };
        Ok(Listener {
            requested: addr,
            socket: Async::new(TcpListener::from(owned))?,
            local,
            inherited: true,
            ready,
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Turns `addr` into socket addresses. `:8080` means every interface, as in Go.
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
            format!("address {addr:?} is not host:port (try 127.0.0.1:8080, [::1]:8080 or :8080)"),
            e,
        )),
    }
}

/// A non-blocking, CLOEXEC listening socket with SO_REUSEADDR; `[::]` accepts IPv4 too.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let socket = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        sockopt::set_ipv6_v6only(&socket, false)?;
    }
    rustix::net::bind(&socket, &addr)?;
    rustix::net::listen(&socket, BACKLOG)?;
    Ok(TcpListener::from(socket))
}

/// Checks that `fd` is an open, listening stream socket and returns its local address.
fn validate_listener(fd: BorrowedFd<'_>, number: RawFd) -> io::Result<SocketAddr> {
    let what = format!("{LISTENER_ENV}: fd {number}");
    let stat = rustix::fs::fstat(fd).map_err(|e| {
        let e = io::Error::from(e);
        if e.raw_os_error() == Some(libc::EBADF) {
            invalid(
                format!("{what} is not open in this process (was it passed with CLOEXEC set?)"),
                e,
            )
        } else {
            invalid(format!("{what} cannot be inspected"), e)
        }
    })?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::Socket {
        return Err(invalid_msg(format!(
            "{what} is not a socket (it is a {})",
            kind(file_type)
        )));
    }
    let socket_type =
        sockopt::socket_type(fd).map_err(|e| invalid(format!("{what}: SO_TYPE"), e))?;
    if socket_type != SocketType::STREAM {
        return Err(invalid_msg(format!("{what} is not a stream (TCP) socket")));
    }
    let listening =
        sockopt::socket_acceptconn(fd).map_err(|e| invalid(format!("{what}: SO_ACCEPTCONN"), e))?;
    if !listening {
        return Err(invalid_msg(format!(
            "{what} is a socket but is not listening"
        )));
    }
    let local =
        rustix::net::getsockname(fd).map_err(|e| invalid(format!("{what}: getsockname"), e))?;
    SocketAddr::try_from(local)
        .map_err(|_| invalid_msg(format!("{what} is not an IPv4 or IPv6 socket")))
}

fn validate_pipe(fd: BorrowedFd<'_>, number: RawFd) -> io::Result<()> {
    let what = format!("{LISTENER_ENV}: ready_fd {number}");
    let stat = rustix::fs::fstat(fd).map_err(|e| invalid(format!("{what} is not open"), e))?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::Fifo {
        return Err(invalid_msg(format!(
            "{what} is not a pipe (it is a {})",
            kind(file_type)
        )));
    }
    Ok(())
}

fn kind(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "pipe",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}

/// Does a socket bound to `local` serve the requested `wanted` address? Port 0 asks for any port;
/// the unspecified addresses of both families are interchangeable (`:8080`).
fn same_address(wanted: SocketAddr, local: SocketAddr) -> bool {
    let ip_matches =
        wanted.ip() == local.ip() || (wanted.ip().is_unspecified() && local.ip().is_unspecified());
    ip_matches && (wanted.port() == 0 || wanted.port() == local.port())
}

/// An error message with its cause kept as the source.
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

fn invalid(message: String, source: impl Into<Box<dyn Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, Cause(message, source.into()))
}

fn invalid_msg(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_go_format() {
        let d = Description::parse(
            r#"{"addr":"127.0.0.1:8080","fd":3,"filename":"tcp:127.0.0.1:8080->"}"#,
        )
        .unwrap();
        assert_eq!(d.addr, "127.0.0.1:8080");
        assert_eq!(d.fd, 3);
        assert_eq!(d.filename, "tcp:127.0.0.1:8080->");
        assert_eq!(d.ready_fd, None);
    }

    #[test]
    fn round_trips_with_ready_fd() {
        let d = Description {
            addr: ":8080".into(),
            fd: 3,
            filename: "tcp:[::]:8080->".into(),
            ready_fd: Some(4),
        };
        assert_eq!(Description::parse(&d.to_json()).unwrap(), d);
    }

    #[test]
    fn ignores_unknown_keys() {
        let d = Description::parse(r#"{"addr":":1","fd":3,"filename":"x","extra":[1]}"#).unwrap();
        assert_eq!(d.fd, 3);
    }

    #[test]
    fn names_what_is_wrong() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1,2]", "must be a JSON object"),
            (r#"{"fd":3}"#, "\"addr\" is missing"),
            (r#"{"addr":1,"fd":3}"#, "\"addr\" must be a string"),
            (r#"{"addr":":1"}"#, "\"fd\" is missing"),
            (r#"{"addr":":1","fd":-1}"#, "non-negative integer"),
            (r#"{"addr":":1","fd":"3"}"#, "non-negative integer"),
            (r#"{"addr":":1","fd":99999999999}"#, "non-negative integer"),
            (r#"{"addr":":1","fd":3,"ready_fd":1.5}"#, "\"ready_fd\""),
        ];
        for (input, expected) in cases {
            let message = Description::parse(input).unwrap_err().to_string();
            assert!(message.contains("LISTENER"), "{input}: {message}");
            assert!(message.contains(expected), "{input}: {message}");
        }
    }

    #[test]
    fn matches_addresses() {
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(same_address("127.0.0.1:0".parse().unwrap(), local));
        assert!(same_address("127.0.0.1:4000".parse().unwrap(), local));
        assert!(!same_address("127.0.0.1:4001".parse().unwrap(), local));
        assert!(!same_address("0.0.0.0:4000".parse().unwrap(), local));
        assert!(same_address(
            "[::]:4000".parse().unwrap(),
            "0.0.0.0:4000".parse().unwrap()
        ));
    }

    #[test]
    fn resolves_go_style_port_only() {
        let list = resolve(":8080").unwrap();
        assert!(
            list.iter()
                .all(|a| a.ip().is_unspecified() && a.port() == 8080)
        );
        assert!(resolve(":http").unwrap_err().to_string().contains("port"));
        assert!(
            resolve("no-port")
                .unwrap_err()
                .to_string()
                .contains("host:port")
        );
    }

    #[test]
    fn imports_a_listener_it_created() {
        let created = Listener::create_or_import("127.0.0.1:0", None).unwrap();
        assert!(!created.inherited);
        // A LISTENER for another address is ignored: a new socket is created.
        let other = r#"{"addr":"127.0.0.1:1","fd":0,"filename":""}"#;
        let fresh = Listener::create_or_import("127.0.0.1:0", Some(other)).unwrap();
        assert!(!fresh.inherited);
        assert_ne!(fresh.local, created.local);
    }

    #[test]
    fn rejects_a_socket_that_is_not_listening() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = stream.as_raw_fd();
        let value = format!(r#"{{"addr":"127.0.0.1:0","fd":{fd},"filename":""}}"#);
        let message = Listener::create_or_import("127.0.0.1:0", Some(&value)).unwrap_err();
        assert!(message.to_string().contains("not listening"), "{message}");
        // The fd was left alone.
        assert!(stream.peer_addr().is_ok());
    }
}
