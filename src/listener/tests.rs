use super::inherit::thread_count;
use super::*;

fn parse(value: &str) -> io::Result<Description> {
    Description::parse_all(value).map(|mut all| all.remove(0))
}

#[test]
fn parses_the_go_format() {
    let d = parse(r#"{"addr":"127.0.0.1:8080","fd":3,"filename":"tcp:127.0.0.1:8080->"}"#).unwrap();
    assert_eq!(d.addr, "127.0.0.1:8080");
    assert_eq!(d.fd, 3);
    assert_eq!(d.filename, "tcp:127.0.0.1:8080->");
    assert_eq!(d.ready_fd, None);
}

#[test]
fn one_listener_is_an_object_several_an_array() {
    let one = Description {
        addr: ":8080".into(),
        fd: 3,
        filename: "tcp:[::]:8080->".into(),
        ready_fd: Some(4),
        relay_fd: None,
        control_fd: None,
    };
    let json = Description::to_json_all(std::slice::from_ref(&one));
    assert!(json.starts_with('{'), "{json}");
    assert_eq!(Description::parse_all(&json).unwrap(), vec![one.clone()]);
    let two = Description {
        addr: "unix:/tmp/x".into(),
        fd: 4,
        filename: "unix:/tmp/x->".into(),
        ready_fd: Some(5),
        relay_fd: None,
        control_fd: None,
    };
    let json = Description::to_json_all(&[one.clone(), two.clone()]);
    assert!(json.starts_with('['), "{json}");
    assert_eq!(Description::parse_all(&json).unwrap(), vec![one, two]);
}

#[test]
fn ignores_unknown_keys() {
    let d = parse(r#"{"addr":":1","fd":3,"filename":"x","extra":[1]}"#).unwrap();
    assert_eq!(d.fd, 3);
}

#[test]
fn names_what_is_wrong() {
    let cases = [
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ("[1,2]", "must be a JSON object"),
        ("7", "must be a JSON object"),
        (r#"{"fd":3}"#, "\"addr\" is missing"),
        (r#"{"addr":1,"fd":3}"#, "\"addr\" must be a string"),
        (r#"{"addr":":1"}"#, "\"fd\" is missing"),
        (r#"{"addr":":1","fd":-1}"#, "non-negative integer"),
        (r#"{"addr":":1","fd":"3"}"#, "non-negative integer"),
        (r#"{"addr":":1","fd":99999999999}"#, "non-negative integer"),
        (r#"{"addr":":1","fd":3,"ready_fd":1.5}"#, "\"ready_fd\""),
    ];
    for (input, expected) in cases {
        let message = Description::parse_all(input).unwrap_err().to_string();
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
    let unix = spec("unix:/run/a.sock").unwrap();
    assert!(unix.matches(&Address::Unix("/run/a.sock".into())));
    assert!(!unix.matches(&Address::Unix("/run/b.sock".into())));
    assert!(!unix.matches(&Address::Tcp(local)));
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
    assert!(spec("unix:").unwrap_err().to_string().contains("empty"));
}

#[test]
fn a_listener_env_for_another_address_is_an_error_naming_both() {
    let created = Listener::bind_all(&["127.0.0.1:0".into()], &Inheritance::default())
        .unwrap()
        .listeners;
    assert_eq!(created[0].origin, Origin::Created);
    let other = Inheritance::from_listener(r#"{"addr":":8080","fd":0,"filename":""}"#).unwrap();
    let error = Listener::bind_all(&["127.0.0.1:0".into()], &other).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("\":8080\"") && text.contains("127.0.0.1:0"),
        "{text}"
    );
    assert!(text.contains("bind_inherited_or"), "{text}");
}

#[test]
fn rejects_a_socket_that_is_not_listening() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let fd = stream.as_raw_fd();
    let value = format!(r#"{{"addr":"127.0.0.1:0","fd":{fd},"filename":""}}"#);
    let inheritance = Inheritance::from_listener(&value).unwrap();
    let message = Listener::bind_all(&["127.0.0.1:0".into()], &inheritance).unwrap_err();
    assert!(message.to_string().contains("not listening"), "{message}");
    // The fd was left alone.
    assert!(stream.peer_addr().is_ok());
}

/// `udp:` addresses bind a UDP socket; an inherited UDP socket is taken for a `udp:`
/// address and refused for a TCP one; a Unix datagram socket is refused, naming it.
#[test]
fn udp_listeners_are_created_and_inherited_and_other_datagram_sockets_refused() {
    let created = Listener::bind_all(&["udp:127.0.0.1:0".into()], &Inheritance::default())
        .unwrap()
        .listeners;
    let Address::Udp(local) = created[0].local else {
        panic!("{:?}", created[0].local);
    };
    assert_eq!(created[0].describe(3).filename, format!("udp:{local}->"));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let fd = socket.as_raw_fd();
    let value = format!(r#"{{"addr":"udp:127.0.0.1:0","fd":{fd},"filename":""}}"#);
    let inheritance = Inheritance::from_listener(&value).unwrap();
    let error = Listener::bind_all(&["127.0.0.1:0".into()], &inheritance).unwrap_err();
    assert!(error.to_string().contains("udp:127.0.0.1:0"), "{error}");
    let value = format!(r#"{{"addr":"127.0.0.1:0","fd":{fd},"filename":""}}"#);
    let inheritance = Inheritance::from_listener(&value).unwrap();
    let error = Listener::bind_all(&["127.0.0.1:0".into()], &inheritance).unwrap_err();
    assert!(error.to_string().contains("listens on udp:"), "{error}");
    let (unix, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let fd = unix.as_raw_fd();
    let value = format!(r#"{{"addr":"udp:127.0.0.1:0","fd":{fd},"filename":""}}"#);
    let inheritance = Inheritance::from_listener(&value).unwrap();
    let error = Listener::bind_all(&["udp:127.0.0.1:0".into()], &inheritance).unwrap_err();
    assert!(error.to_string().contains("not UDP"), "{error}");
    // Taken, at last, for the address it serves.
    let value = format!(
        r#"{{"addr":"udp:127.0.0.1:0","fd":{},"filename":""}}"#,
        socket.as_raw_fd()
    );
    let inheritance = Inheritance::from_listener(&value).unwrap();
    let adopted = Listener::bind_all(&["udp:127.0.0.1:0".into()], &inheritance)
        .unwrap()
        .listeners;
    assert_eq!(adopted[0].local, Address::Udp(socket.local_addr().unwrap()));
    assert_eq!(adopted[0].origin, Origin::Inherited);
    std::mem::forget(socket);
}

#[test]
fn unix_sockets_replace_stale_files_and_refuse_live_ones() {
    let dir = std::env::temp_dir().join(format!("baton-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let addr = format!("unix:{}", path.display());
    // A stale socket file: bound once, nobody accepting any more.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let live = Listener::bind_all(std::slice::from_ref(&addr), &Inheritance::default())
        .unwrap()
        .listeners;
    assert_eq!(live[0].local, Address::Unix(path.clone()));
    // Now someone is accepting: a second server must not steal the path.
    let error =
        Listener::bind_all(std::slice::from_ref(&addr), &Inheritance::default()).unwrap_err();
    assert!(error.to_string().contains("in use"), "{error}");
    // Not a socket at all.
    let file = dir.join("plain");
    std::fs::write(&file, b"x").unwrap();
    let error = Listener::bind_all(
        &[format!("unix:{}", file.display())],
        &Inheritance::default(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("not a socket"), "{error}");
    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One fd named for two roles would be owned, and closed, twice: refused, naming it.
#[test]
fn an_fd_named_for_two_roles_is_refused_with_its_number() {
    let cases = [
        (
            r#"{"addr":"127.0.0.1:0","fd":3,"filename":"","relay_fd":7,"control_fd":7}"#,
            "fd 7 is named as both relay_fd and control_fd",
        ),
        (
            r#"{"addr":"127.0.0.1:0","fd":3,"filename":"","ready_fd":3}"#,
            "fd 3 is named as both the listener for \"127.0.0.1:0\" and ready_fd",
        ),
        (
            r#"[{"addr":"a:1","fd":3,"filename":"","ready_fd":5},
                {"addr":"b:1","fd":4,"filename":"","ready_fd":6}]"#,
            "different ready_fds",
        ),
    ];
    for (value, expected) in cases {
        let error = Inheritance::from_listener(value).unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }
    // The same listener fd for two addresses is one role: taken once (see bind_all).
    let value = r#"[{"addr":"a:1","fd":3,"filename":""},{"addr":"b:1","fd":4,"filename":""}]"#;
    assert!(Inheritance::from_listener(value).is_ok());
}

#[test]
fn wrong_kinds_of_fd_are_named() {
    let (datagrams, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let (reader, _writer) = std::io::pipe().unwrap();
    let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
    let cases: [(RawFd, &str); 4] = [
        (
            datagrams.as_raw_fd(),
            "is a datagram socket but not UDP (a Unix datagram socket?)",
        ),
        (reader.as_raw_fd(), "is not a socket (it is a pipe)"),
        (dir.as_raw_fd(), "is not a socket (it is a directory)"),
        (1_000_000, "is not open in this process"),
    ];
    for (fd, expected) in cases {
        let value = format!(r#"{{"addr":"127.0.0.1:0","fd":{fd},"filename":""}}"#);
        let inheritance = Inheritance::from_listener(&value).unwrap();
        let error = Listener::bind_all(&["127.0.0.1:0".into()], &inheritance).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&format!("LISTENER: fd {fd} {expected}")),
            "{message}"
        );
    }
    // None of them was taken over (closed) by the failed attempt.
    assert!(datagrams.local_addr().is_ok());
    assert!(dir.metadata().is_ok());
}

/// The thread count the environment scrub relies on is read correctly: it sees a thread
/// this test starts.
#[test]
fn thread_count_sees_a_started_thread() {
    let before = thread_count().expect("/proc/self/stat is readable");
    assert!(before >= 1);
    // Other tests may start or end threads meanwhile; ours is certainly running.
    let during = while_another_thread_runs(thread_count);
    assert!(during.is_some_and(|n| n >= 2), "{during:?}");
}

/// Runs `f` while one more thread of this process is certainly alive, and returns what it
/// returned (assert on it afterwards: a panic inside would leave the thread waiting).
fn while_another_thread_runs<T>(f: impl FnOnce() -> T) -> T {
    let (started, stop) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            started.wait();
            stop.wait();
        });
        started.wait();
        let result = f();
        stop.wait();
        result
    })
}

/// With other threads running, `LISTENER` stays (changing the environment would not be
/// sound) and the caller learns how many threads there were. The check runs in a child copy
/// of this test binary, started with `LISTENER` set, as a successor would be.
#[test]
fn scrub_leaves_the_environment_alone_while_other_threads_run() {
    const NAME: &str =
        "listener::tests::scrub_leaves_the_environment_alone_while_other_threads_run";
    if std::env::var_os("BATON_TEST_SCRUB_CHILD").is_some() {
        let kept = while_another_thread_runs(scrub_environment);
        assert!(matches!(kept, Some(Some(n)) if n >= 2), "{kept:?}");
        assert!(std::env::var_os(LISTENER_ENV).is_some());
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
        .env("BATON_TEST_SCRUB_CHILD", "1")
        .env(LISTENER_ENV, r#"{"addr":"127.0.0.1:1","fd":3}"#)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test: {stdout}"
    );
}

/// Random and mutated `LISTENER` values: never a panic, and every error names LISTENER.
#[test]
fn listener_values_never_panic() {
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"addr\"",
        "\"fd\"",
        "\"filename\"",
        "\"ready_fd\"",
        "\"127.0.0.1:0\"",
        "3",
        "-1",
        "1e9",
        "null",
        "true",
        "\"x\"",
        " ",
        "99999999999",
    ];
    for _ in 0..20_000 {
        let len = (next() % 12) as usize;
        let value: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        if let Err(error) = Description::parse_all(&value) {
            assert!(error.to_string().contains("LISTENER"), "{value}: {error}");
        }
    }
}
