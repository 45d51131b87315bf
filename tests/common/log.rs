//! The one parser of the example's event lines: `baton[<pid>]: <message>`, as the default
//! event sink writes them (one line per [`baton::Event`]).

/// One event line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    /// The process that wrote it.
    pub pid: u32,
    /// The event's text.
    pub message: &'a str,
}

/// Parses `baton[<pid>]: <message>`; `None` for any other line.
pub fn parse(line: &str) -> Option<Line<'_>> {
    let rest = line.strip_prefix("baton[")?;
    let (pid, message) = rest.split_once("]: ")?;
    Some(Line {
        pid: pid.parse().ok()?,
        message,
    })
}

impl<'a> Line<'a> {
    /// The address of a `listening on <addr> (fd N, origin)` line (`tls:` kept).
    pub fn listening(&self) -> Option<&'a str> {
        self.message
            .strip_prefix("listening on ")?
            .split(' ')
            .next()
    }

    /// The pid of a `spawned child <pid>` line.
    pub fn spawned(&self) -> Option<u32> {
        self.message
            .strip_prefix("spawned child ")?
            .trim()
            .parse()
            .ok()
    }

    /// The pid and outcome of a `child <pid> ready` / `child <pid> failed: ...` line.
    pub fn child(&self) -> Option<(u32, &'a str)> {
        let (pid, outcome) = self.message.strip_prefix("child ")?.split_once(' ')?;
        Some((pid.parse().ok()?, outcome))
    }
}

impl<'a> Line<'a> {
    /// The pid and generation of a `worker <pid> ready (generation <g>)` line.
    pub fn worker_ready(&self) -> Option<(u32, u64)> {
        let rest = self.message.strip_prefix("worker ")?;
        let (pid, rest) = rest.split_once(" ready (generation ")?;
        Some((pid.parse().ok()?, rest.strip_suffix(')')?.parse().ok()?))
    }

    /// The pid of a `worker <pid> exited (...)...` line.
    pub fn worker_exited(&self) -> Option<u32> {
        let rest = self.message.strip_prefix("worker ")?;
        let (pid, _) = rest.split_once(" exited (")?;
        pid.parse().ok()
    }

    /// The generation of a `restarted: generation <g>, ...` line.
    pub fn restarted(&self) -> Option<u64> {
        let rest = self.message.strip_prefix("restarted: generation ")?;
        rest.split(',').next()?.parse().ok()
    }
}

/// The pid in a `... child <pid> ready` (or `failed`, `exited`) line.
pub fn child_pid(line: &str) -> u32 {
    line.split("child ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("a child pid in the line")
}

#[test]
fn parses_event_lines() {
    let line = parse("baton[12]: listening on 127.0.0.1:80 (fd 3, created)").unwrap();
    assert_eq!((line.pid, line.listening()), (12, Some("127.0.0.1:80")));
    assert_eq!(
        parse("baton[12]: child 13 ready").unwrap().child(),
        Some((13, "ready"))
    );
    assert_eq!(
        parse("baton[1]: spawned child 7").unwrap().spawned(),
        Some(7)
    );
    assert_eq!(parse("hello: oops"), None);
    let ready = parse("baton[1]: worker 9 ready (generation 2)").unwrap();
    assert_eq!(ready.worker_ready(), Some((9, 2)));
    let exited = parse("baton[1]: worker 9 exited (signal: 9 (SIGKILL)) unexpectedly").unwrap();
    assert_eq!(exited.worker_exited(), Some(9));
    let restarted = parse("baton[1]: restarted: generation 3, 2 serving").unwrap();
    assert_eq!(restarted.restarted(), Some(3));
}
