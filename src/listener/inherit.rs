//! What a parent or systemd hands this process, in one place: reading `LISTENER` and
//! `LISTEN_*`, checking each fd they name, and taking ownership of the ones that pass.
//!
//! Every inherited fd number goes through [`inspect`] (borrowed for checks only) and, once it
//! passed its check, [`Checked::claim`] (owned, CLOEXEC set again): the only two places in
//! the crate that turn a number from the environment into an fd.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use rustix::fs::FileType;
use rustix::io::FdFlags;
use rustix::net::{SocketAddrUnix, SocketType, sockopt};

use super::{ACTIVATION_ENV, Address, FIRST_FD, LISTENER_ENV, MAX_LISTENERS, Origin, Spec};
use crate::error::{invalid, invalid_msg};

/// Runs `look` on an fd number handed to this process, borrowed for that call only, for
/// inspection (fstat, getsockopt, getsockname, fcntl): a number that is not open makes those
/// calls fail with EBADF, nothing more. The borrow cannot outlive `look`.
fn inspect<T>(fd: RawFd, look: impl FnOnce(BorrowedFd<'_>) -> T) -> T {
    // SAFETY: `look` gets a borrow that cannot escape it (its lifetime is the closure's
    // argument's), and only this module's inspecting calls are made with it: none closes or
    // takes the fd, and on a number that is not open (or not this process's) each fails with
    // EBADF or inspects what is there without changing it but for the CLOEXEC flag the
    // caller asked for.
    look(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Sets or clears CLOEXEC on `fd`, one of this process's own open fds (a supervising
/// process keeps its listeners and control channels across its own `execve` this way).
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on {
        FdFlags::CLOEXEC
    } else {
        FdFlags::empty()
    };
    // Same borrow as `inspect`: only the fd's flags change, and the caller owns it.
    inspect(fd, |fd| rustix::io::fcntl_setfd(fd, flags)).map_err(io::Error::from)
}

/// An inherited fd that passed its check (a listening socket, the readiness pipe, the relay).
#[derive(Debug)]
pub(crate) struct Checked(RawFd);

impl Checked {
    pub(crate) fn fd(&self) -> RawFd {
        self.0
    }

    /// Takes ownership, and sets CLOEXEC again so later children do not inherit it.
    pub(crate) fn claim(self) -> io::Result<OwnedFd> {
        // SAFETY: the number was checked to be open and of the expected kind, and was handed to
        // this process by its parent or systemd; only one `Checked` per number is claimed
        // (bind_all skips numbers already used; the others are dropped unclaimed), so nothing
        // else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(self.0) };
        rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC)?;
        Ok(owned)
    }
}

/// One listener as `LISTENER` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Description {
    /// The address the listener was requested with (`:8080`, `127.0.0.1:0`, `unix:/run/x`).
    pub(crate) addr: String,
    /// The fd the socket arrives as.
    pub(crate) fd: RawFd,
    /// Go's `os.File` name for the socket, e.g. `tcp:127.0.0.1:8080->`.
    pub(crate) filename: String,
    /// The write end of the readiness pipe, if the parent passed one.
    pub(crate) ready_fd: Option<RawFd>,
    /// This process's end of the connection relay, if the parent hands connections over.
    pub(crate) relay_fd: Option<RawFd>,
    /// A worker's end of the control channel to its supervising process.
    pub(crate) control_fd: Option<RawFd>,
}

impl Description {
    /// Parses the value of `LISTENER`: one object, or an array of them.
    pub(crate) fn parse_all(value: &str) -> io::Result<Vec<Description>> {
        const SHAPE: &str =
            r#"{"addr":"127.0.0.1:8080","fd":3,"filename":"..."} or an array of them"#;
        let json = crate::json::parse(value).map_err(|e| {
            invalid(
                format!("{LISTENER_ENV} is not valid JSON (expected {SHAPE})"),
                e,
            )
        })?;
        match &json {
            serde_json::Value::Array(items) if !items.is_empty() => {
                items.iter().map(Description::from_json).collect()
            }
            serde_json::Value::Object(_) => Ok(vec![Description::from_json(&json)?]),
            _ => Err(invalid_msg(format!(
                "{LISTENER_ENV} must be a JSON object like {SHAPE}"
            ))),
        }
    }

    fn from_json(json: &serde_json::Value) -> io::Result<Description> {
        const SHAPE: &str = r#"{"addr":"127.0.0.1:8080","fd":3,"filename":"..."}"#;
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
        let optional_fd = |key: &str| match object.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => fd_number(value, key).map(Some),
        };
        Ok(Description {
            addr,
            fd,
            filename,
            ready_fd: optional_fd("ready_fd")?,
            relay_fd: optional_fd("relay_fd")?,
            control_fd: optional_fd("control_fd")?,
        })
    }

    fn to_value(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("addr".into(), self.addr.clone().into());
        object.insert("fd".into(), self.fd.into());
        object.insert("filename".into(), self.filename.clone().into());
        let channels = [
            ("ready_fd", self.ready_fd),
            ("relay_fd", self.relay_fd),
            ("control_fd", self.control_fd),
        ];
        for (key, fd) in channels {
            if let Some(fd) = fd {
                object.insert(key.into(), fd.into());
            }
        }
        serde_json::Value::Object(object)
    }

    /// The JSON text for `LISTENER`: the single object the Go original reads when there is one
    /// listener, an array otherwise.
    pub(crate) fn to_json_all(all: &[Description]) -> String {
        match all {
            [one] => crate::json::text(&one.to_value()),
            many => crate::json::text(&serde_json::Value::Array(
                many.iter().map(Description::to_value).collect(),
            )),
        }
    }
}

fn fd_number(value: &serde_json::Value, key: &str) -> io::Result<RawFd> {
    value
        .as_i64()
        .and_then(|n| RawFd::try_from(n).ok())
        .filter(|&n| n >= 0)
        .ok_or_else(|| {
            let got = crate::json::text(value);
            invalid_msg(format!(
                "{LISTENER_ENV}: \"{key}\" must be a non-negative integer fd number, got {got}"
            ))
        })
}

/// The environment variable a supervising process hands to itself across `execve`: its
/// workers, their control channels, its generation.
pub(crate) const SUPERVISOR_ENV: &str = "BATON_SUPERVISOR";

/// What endless hands its children: `ENDLESS_CONTINUE=1` and the sockets' addresses in fd order.
pub(crate) const ENDLESS_ENV: [&str; 2] = ["ENDLESS_CONTINUE", "ENDLESS_SOCKET_ORDER"];

/// Takes `LISTENER` and the `LISTEN_*` variables out of this process's environment once they
/// are read, so processes the handler starts never see fds that were not meant for them (a
/// grandchild that is itself a baton or Go server would otherwise try to adopt fd 3).
///
/// Changing the environment is only sound while no other thread can read it, so this happens
/// only if this process has a single thread; `Server::bind` calls it before it creates
/// anything that starts a thread. Returns the thread count (if known) when the variables had
/// to stay, `None` when they are gone or were never there.
pub(crate) fn scrub_environment() -> Option<Option<usize>> {
    let present: Vec<&str> = [LISTENER_ENV, SUPERVISOR_ENV]
        .into_iter()
        .chain(ENDLESS_ENV)
        .chain(ACTIVATION_ENV)
        .filter(|name| std::env::var_os(name).is_some())
        .collect();
    if present.is_empty() {
        return None;
    }
    match thread_count() {
        Some(1) => {
            for name in present {
                // SAFETY: this process has exactly one thread, the one running this code, so
                // no other thread reads or writes the environment while it changes, and none
                // can be started in between except by this code, which starts none.
                unsafe { std::env::remove_var(name) };
            }
            None
        }
        threads => Some(threads),
    }
}

/// How many threads this process has (field 20 of `/proc/self/stat`), if that can be read.
pub(crate) fn thread_count() -> Option<usize> {
    // One read into a buffer larger than the record (a few hundred bytes), where
    // `read_to_string` would probe with half a dozen small reads.
    let mut stat = [0u8; 1024];
    let len =
        std::io::Read::read(&mut std::fs::File::open("/proc/self/stat").ok()?, &mut stat).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or any byte; fields
    // 3.. follow the last ')'.
    let after = stat[..len].iter().rposition(|&b| b == b')')? + 1;
    let fields = std::str::from_utf8(&stat[after..len]).ok()?;
    fields.split_whitespace().nth(17)?.parse().ok()
}

/// What the environment hands this process: `LISTENER` descriptions, socket-activated fds.
#[derive(Debug, Default)]
pub(crate) struct Inheritance {
    pub(crate) descriptions: Vec<Description>,
    /// fd and name (`LISTEN_FDNAMES`) of each socket-activated fd.
    pub(crate) activated: Vec<(RawFd, Option<String>)>,
    /// A supervising process's state from before it re-executed itself, as JSON text.
    pub(crate) supervisor: Option<String>,
    /// endless's parent (`ENDLESS_CONTINUE`): it hands over its sockets and waits for a
    /// SIGTERM from this process once it serves.
    pub(crate) endless_parent: Option<u32>,
}

impl Inheritance {
    /// Reads `LISTENER` and, if `LISTEN_PID` names this process, `LISTEN_FDS`/`LISTEN_FDNAMES`.
    pub(crate) fn from_env() -> io::Result<Inheritance> {
        let var = |name: &str| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is not valid UTF-8"),
            )),
        };
        let mut descriptions = match var(LISTENER_ENV)? {
            Some(value) => Description::parse_all(&value)?,
            None => Vec::new(),
        };
        let mut activated = Vec::new();
        let ours =
            var("LISTEN_PID")?.is_some_and(|pid| pid.trim() == std::process::id().to_string());
        if let (true, Some(count)) = (ours, var("LISTEN_FDS")?) {
            let count: usize = count
                .trim()
                .parse()
                .map_err(|e| invalid(format!("LISTEN_FDS={count:?} is not a number of fds"), e))?;
            if count > MAX_LISTENERS * 4 {
                return Err(invalid_msg(format!(
                    "LISTEN_FDS={count} is more fds than baton takes"
                )));
            }
            let names = var("LISTEN_FDNAMES")?.unwrap_or_default();
            let mut names = names.split(':').map(str::to_owned);
            for i in 0..count {
                let name = names.next().filter(|n| !n.is_empty());
                activated.push((FIRST_FD + i as RawFd, name));
            }
        }
        let supervisor = var(SUPERVISOR_ENV)?;
        let mut endless_parent = None;
        if descriptions.is_empty() && var(ENDLESS_ENV[0])?.as_deref() == Some("1") {
            // endless: the sockets from fd 3, in the order of ENDLESS_SOCKET_ORDER.
            let order = var(ENDLESS_ENV[1])?.unwrap_or_default();
            for (i, addr) in order.split(',').filter(|a| !a.is_empty()).enumerate() {
                descriptions.push(Description {
                    addr: addr.to_owned(),
                    fd: FIRST_FD + i as RawFd,
                    filename: String::new(),
                    ready_fd: None,
                    relay_fd: None,
                    control_fd: None,
                });
            }
            endless_parent =
                Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32));
        }
        let inheritance = Inheritance {
            descriptions,
            activated,
            supervisor,
            endless_parent,
        };
        inheritance.check_distinct()?;
        Ok(inheritance)
    }

    /// Refuses an fd named for two roles (a listener and a channel, the relay and the control
    /// channel, two readiness pipes): each role takes ownership of its fd, and one fd owned
    /// twice would be closed twice. The error names the fd and both roles.
    fn check_distinct(&self) -> io::Result<()> {
        let mut roles: Vec<(RawFd, String)> = Vec::new();
        let mut name = |fd: RawFd, role: String| -> io::Result<()> {
            match roles.iter().find(|(seen, _)| *seen == fd) {
                Some((_, first)) if *first != role => Err(invalid_msg(format!(
                    "{LISTENER_ENV}: fd {fd} is named as both {first} and {role}: each fd \
                     serves one role"
                ))),
                Some(_) => Ok(()),
                None => {
                    roles.push((fd, role));
                    Ok(())
                }
            }
        };
        for d in &self.descriptions {
            name(d.fd, format!("the listener for {:?}", d.addr))?;
        }
        for d in &self.descriptions {
            if let Some(fd) = d.ready_fd {
                name(fd, "ready_fd".into())?;
            }
            if let Some(fd) = d.relay_fd {
                name(fd, "relay_fd".into())?;
            }
            if let Some(fd) = d.control_fd {
                name(fd, "control_fd".into())?;
            }
        }
        let kinds = |pick: fn(&Description) -> Option<RawFd>| {
            let mut all: Vec<RawFd> = self.descriptions.iter().filter_map(pick).collect();
            all.dedup();
            all.len()
        };
        for (what, count) in [
            ("ready_fd", kinds(|d| d.ready_fd)),
            ("relay_fd", kinds(|d| d.relay_fd)),
            ("control_fd", kinds(|d| d.control_fd)),
        ] {
            if count > 1 {
                return Err(invalid_msg(format!(
                    "{LISTENER_ENV}: its listeners name different {what}s: one is expected"
                )));
            }
        }
        Ok(())
    }

    /// The readiness pipe's write end, if the parent passed one.
    pub(crate) fn claim_ready(&self) -> io::Result<Option<OwnedFd>> {
        match self.descriptions.iter().find_map(|d| d.ready_fd) {
            Some(fd) => validate_pipe(fd)?.claim().map(Some),
            None => Ok(None),
        }
    }

    /// This process's end of the connection relay, if the parent hands connections over.
    pub(crate) fn claim_relay(&self) -> io::Result<Option<OwnedFd>> {
        match self.descriptions.iter().find_map(|d| d.relay_fd) {
            Some(fd) => claim_channel(fd, &format!("{LISTENER_ENV}: relay_fd")).map(Some),
            None => Ok(None),
        }
    }

    /// This worker's end of the control channel, if a supervising process started it.
    pub(crate) fn claim_control(&self) -> io::Result<Option<OwnedFd>> {
        match self.descriptions.iter().find_map(|d| d.control_fd) {
            Some(fd) => claim_channel(fd, &format!("{LISTENER_ENV}: control_fd")).map(Some),
            None => Ok(None),
        }
    }

    /// Keeps socket-activated fds out of later children: they are never passed on as such.
    pub(crate) fn close_activated_on_exec(&self) {
        for (fd, _) in &self.activated {
            // Fails harmlessly (EBADF) if one is not open.
            let _ = inspect(*fd, |fd| rustix::io::fcntl_setfd(fd, FdFlags::CLOEXEC));
        }
    }

    #[cfg(test)]
    pub(crate) fn from_listener(value: &str) -> io::Result<Inheritance> {
        let inheritance = Inheritance {
            descriptions: Description::parse_all(value)?,
            activated: Vec::new(),
            supervisor: None,
            endless_parent: None,
        };
        inheritance.check_distinct()?;
        Ok(inheritance)
    }
}

/// The socket-activated fd for `addr`: the one named like it (`LISTEN_FDNAMES`), else the
/// first unused one bound to it. Every activated fd must be a listening stream socket.
pub(crate) fn activated_for(
    addr: &str,
    spec: Option<&Spec>,
    activated: &[(RawFd, Option<String>)],
    used: &[RawFd],
) -> io::Result<Option<(Checked, Address, Origin)>> {
    let mut bound = None;
    for (fd, name) in activated {
        let (checked, local) = validate_listener(*fd, &format!("LISTEN_FDS: fd {fd}"))?;
        if used.contains(fd) {
            continue;
        }
        if name.as_deref() == Some(addr) {
            return Ok(Some((checked, local, Origin::Activated)));
        }
        if bound.is_none() && spec.is_some_and(|spec| spec.matches(&local)) {
            bound = Some((checked, local, Origin::Activated));
        }
    }
    Ok(bound)
}

/// Checks that `fd` is an open, listening stream socket (TCP or Unix), or a bound UDP socket,
/// and returns its address.
fn validate(fd: RawFd, what: &str) -> io::Result<Address> {
    inspect(fd, |fd| validate_borrowed(fd, what))
}

fn validate_borrowed(fd: BorrowedFd<'_>, what: &str) -> io::Result<Address> {
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
    if socket_type == SocketType::DGRAM {
        let local =
            rustix::net::getsockname(fd).map_err(|e| invalid(format!("{what}: getsockname"), e))?;
        return match SocketAddr::try_from(local) {
            Ok(addr) => Ok(Address::Udp(addr)),
            Err(_) => Err(invalid_msg(format!(
                "{what} is a datagram socket but not UDP (a Unix datagram socket?)"
            ))),
        };
    }
    if socket_type != SocketType::STREAM {
        return Err(invalid_msg(format!(
            "{what} is neither a stream socket nor a UDP socket"
        )));
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
    if let Ok(addr) = SocketAddr::try_from(local.clone()) {
        return Ok(Address::Tcp(addr));
    }
    match SocketAddrUnix::try_from(local) {
        Ok(unix) => match unix.path_bytes() {
            Some(path) if !path.is_empty() => {
                use std::os::unix::ffi::OsStrExt;
                Ok(Address::Unix(PathBuf::from(std::ffi::OsStr::from_bytes(
                    path,
                ))))
            }
            _ => Err(invalid_msg(format!(
                "{what} is an unnamed or abstract Unix socket"
            ))),
        },
        Err(_) => Err(invalid_msg(format!("{what} is not a TCP or Unix socket"))),
    }
}

fn validate_pipe(number: RawFd) -> io::Result<Checked> {
    let what = format!("{LISTENER_ENV}: ready_fd {number}");
    let stat = inspect(number, |fd| rustix::fs::fstat(fd))
        .map_err(|e| invalid(format!("{what} is not open"), e))?;
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::Fifo {
        return Err(invalid_msg(format!(
            "{what} is not a pipe (it is a {})",
            kind(file_type)
        )));
    }
    Ok(Checked(number))
}

/// A relay or control channel handed to this process as `number` (`what` names where the
/// number came from, `LISTENER: relay_fd` say): checked to be a SEQPACKET socket, then owned.
pub(crate) fn claim_channel(number: RawFd, what: &str) -> io::Result<OwnedFd> {
    validate_channel(number, what)?.claim()
}

fn validate_channel(number: RawFd, what: &str) -> io::Result<Checked> {
    let what = format!("{what} {number}");
    let kind = inspect(number, |fd| sockopt::socket_type(fd))
        .map_err(|e| invalid(format!("{what} is not a socket"), e))?;
    if kind != SocketType::SEQPACKET {
        return Err(invalid_msg(format!("{what} is not a SEQPACKET socket")));
    }
    Ok(Checked(number))
}

/// The listening socket at `fd`, checked as [`validate`] does; with its address.
pub(crate) fn validate_listener(fd: RawFd, what: &str) -> io::Result<(Checked, Address)> {
    validate(fd, what).map(|local| (Checked(fd), local))
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
