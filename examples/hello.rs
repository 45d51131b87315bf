//! A hello-world server that restarts with zero downtime: `kill -HUP <pid>` (or `hello reload
//! --pid-file PATH`) and a new process takes over the socket, with its live connections,
//! while this one finishes its requests.
//!
//! Run with: `cargo run --example hello [-- --addr 127.0.0.1:8080 --drain-timeout 5s]`
//!
//! `GET /hello` answers `Hello from <pid>!`; `GET /count` counts its calls across restarts
//! (the count is the state handed to each successor); anything else is 404.

use std::cell::Cell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use http_types::{Method, Request, Response, StatusCode};

/// What the command line asks for.
pub struct Args {
    pub addrs: Vec<String>,
    /// The core's settings.
    pub config: baton::Config,
    /// The HTTP server's.
    pub http: baton::http::Options,
}

pub fn usage() -> String {
    let (d, h) = (baton::Config::default(), baton::http::Options::default());
    format!(
        "usage: hello [--addr HOST:PORT]... [options]
  --addr                where to listen (default: what the parent handed over, else
                        127.0.0.1:8080; :8080 means every interface,
                        unix:/path a Unix socket, tls:HOST:PORT TLS); repeat for several
  --drain-timeout       how long a draining process waits for in-flight requests ({:?})
  --upgrade-timeout     how long a restart waits for the new process to be ready ({:?})
  --header-timeout      how long a client may take to send a request head ({:?})
  --keep-alive-timeout  how long a connection may sit idle between requests ({:?})
  --write-timeout       how long a client may stall a response write ({:?})
  --body-timeout        how long a request body may stall ({:?})
  --max-head-bytes      largest request head accepted ({})
  --max-body-bytes      largest request body accepted ({})
  --max-connections     most connections served at once ({})
  --max-state-bytes     largest state a restart hands over ({})
  --pid-file PATH       keep the serving process's pid in this file
  --tls-cert, --tls-key PEM certificate chain and key for tls: addresses (--features tls)
  --no-hand-over        on a restart, close keep-alive connections (Connection: close)
                        instead of moving them to the new process
  --max-generations N   most generations alive at once, the serving one counted ({})
  --ready-after 1s      count a successor that cannot report readiness (a Go server)
                        as ready once it has run this long (default: wait for its report)
  --workers N           a supervising process that keeps the PID and the sockets, serving
                        through N worker processes (default: 1 as PID 1, else 0: one
                        process that replaces itself on restart)
usage: hello reload --pid-file PATH [--timeout 30s]
  restarts the server that PATH names and exits 0 once the new code serves, 1 (with the
  reason) if the restart failed",
        d.drain_timeout,
        d.ready_timeout,
        h.header_timeout,
        h.keep_alive_timeout,
        h.write_timeout,
        h.body_timeout,
        h.max_head_bytes,
        h.max_body_bytes,
        d.max_connections,
        d.max_state_bytes,
        d.max_generations,
    )
}

/// Parses the options in `argv` (without the program's name).
pub fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        addrs: Vec::new(),
        config: baton::Config::default(),
        http: baton::http::Options::default(),
    };
    let (mut tls_cert, mut tls_key) = (None, None);
    let (config, http) = (&mut args.config, &mut args.http);
    let mut argv = argv.into_iter();
    while let Some(flag) = argv.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag.clone(), None),
        };
        match name.as_str() {
            "-h" | "--help" => return Err(usage()),
            "--no-hand-over" => {
                config.hand_over_connections = false;
                continue;
            }
            _ => {}
        }
        let Some(value) = inline.or_else(|| argv.next()) else {
            return Err(format!("{name} needs a value\n{}", usage()));
        };
        let duration = || parse_duration(&name, &value);
        match name.as_str() {
            "--addr" => args.addrs.push(value),
            "--drain-timeout" => config.drain_timeout = duration()?,
            "--upgrade-timeout" => config.ready_timeout = duration()?,
            "--header-timeout" => http.header_timeout = duration()?,
            "--keep-alive-timeout" => http.keep_alive_timeout = duration()?,
            "--write-timeout" => http.write_timeout = duration()?,
            "--body-timeout" => http.body_timeout = duration()?,
            "--max-head-bytes" => http.max_head_bytes = parse_number(&name, &value)?,
            "--max-body-bytes" => http.max_body_bytes = parse_number(&name, &value)?,
            "--max-connections" => config.max_connections = parse_number(&name, &value)?,
            "--max-state-bytes" => config.max_state_bytes = parse_number(&name, &value)?,
            "--workers" => config.workers = Some(parse_number(&name, &value)?),
            "--max-generations" => config.max_generations = parse_number(&name, &value)?,
            "--ready-after" => config.successor_ready_after = Some(duration()?),
            "--pid-file" => config.pid_file = Some(value.into()),
            "--tls-cert" => tls_cert = Some(value),
            "--tls-key" => tls_key = Some(value),
            _ => return Err(format!("unknown option {name}\n{}", usage())),
        }
    }
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) if cfg!(feature = "tls") => {
            http.tls_files = Some((cert.into(), key.into()));
        }
        (None, None) => {}
        _ if !cfg!(feature = "tls") => {
            return Err(
                "--tls-cert and --tls-key need the tls feature (cargo run --features tls)".into(),
            );
        }
        _ => return Err("--tls-cert and --tls-key go together".into()),
    }
    Ok(args)
}

pub fn parse_number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag} {text:?}: expected a whole number"))
}

/// `250ms`, `5s`, `1.5m`, or a bare number of seconds. Read in whole nanoseconds, without
/// floating point (whose parser would be the largest function of the binary's options).
pub fn parse_duration(flag: &str, text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let expected = || format!("{flag} {text:?}: expected a duration like 500ms, 5s or 2m");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(expected());
    }
    let nanos_per_unit: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        _ => return Err(format!("{flag} {text:?}: unit must be ms, s or m")),
    };
    let too_long = || format!("{flag} {text:?}: too long a duration");
    let whole: u128 = match whole {
        "" => 0,
        digits => digits.parse().map_err(|_| too_long())?,
    };
    // Digits past the nanosecond do not count (at most 11 are needed, for minutes).
    let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(too_long)?;
    let mut scale = nanos_per_unit;
    for digit in fraction.bytes().take(12) {
        scale /= 10;
        nanos = nanos.saturating_add(u128::from(digit - b'0') * scale);
    }
    let seconds = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(seconds, (nanos % 1_000_000_000) as u32))
}

/// `hello reload --pid-file P [--timeout D]`: a restart that answers.
pub fn reload(mut argv: impl Iterator<Item = String>) -> ExitCode {
    let (mut pid_file, mut timeout) = (None, Duration::from_secs(30));
    while let Some(flag) = argv.next() {
        match (flag.as_str(), argv.next()) {
            ("--pid-file", Some(path)) => pid_file = Some(path),
            ("--timeout", Some(text)) => match parse_duration(&flag, &text) {
                Ok(t) => timeout = t,
                Err(message) => return fail(&message, 2),
            },
            _ => {
                return fail(
                    &format!("hello reload: unexpected {flag:?}\n{}", usage()),
                    2,
                );
            }
        }
    }
    let Some(pid_file) = pid_file else {
        return fail("hello reload needs --pid-file PATH", 2);
    };
    match baton::reload(&pid_file, timeout) {
        Ok(pid) => {
            println!("restarted: {pid} serves");
            ExitCode::SUCCESS
        }
        Err(error) => fail(&format!("hello reload: {error}"), 1),
    }
}

pub fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(code)
}

/// Binds what `args` asks for (without `--addr`: whatever the parent handed over, as a Go
/// server re-executes its successor with no arguments; else the default address).
pub fn bind(args: Args) -> Result<baton::Server, ExitCode> {
    let bound = match args.addrs.is_empty() {
        true => baton::Server::bind_inherited_or("127.0.0.1:8080"),
        false => baton::Server::bind_all(&args.addrs),
    };
    match bound {
        Ok(server) => Ok(server
            .core(|baton| baton.with_config(args.config))
            .with_options(args.http)),
        Err(error) => Err(fail(&format!("hello: {error}"), 1)),
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("reload") {
        return reload(argv.skip(1));
    }
    let args = match parse_args(argv) {
        Ok(args) => args,
        Err(message) => return fail(&message, 2),
    };
    let server = match bind(args) {
        Ok(server) => server,
        Err(code) => return code,
    };
    let pid = std::process::id();
    // The state each successor inherits: the count of `/count` calls.
    let count = Rc::new(Cell::new(0u64));
    let (give, take) = (count.clone(), count.clone());
    let server = server.core(|baton| {
        baton
            .on_hand_over_state(move || serde_json::json!({ "count": give.get() }))
            .on_inherit_state(move |state| take.set(state["count"].as_u64().unwrap_or(0)))
    });
    let handler = move |req: Request| {
        let count = count.clone();
        async move {
            match (req.method(), req.url().path()) {
                (Method::Get | Method::Head, "/hello") => {
                    Ok(Response::from(format!("Hello from {pid}!\n")))
                }
                (Method::Get, "/count") => {
                    count.set(count.get() + 1);
                    Ok(Response::from(format!(
                        "count {} from {pid}\n",
                        count.get()
                    )))
                }
                _ => Ok(Response::new(StatusCode::NotFound)),
            }
        }
    };
    match smol::block_on(server.serve(handler)) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => fail(&format!("hello: {error}"), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_are_read_to_the_nanosecond_and_bad_ones_named() {
        let ok = |text| parse_duration("--drain-timeout", text).unwrap();
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("5"), Duration::from_secs(5));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("2."), Duration::from_secs(2));
        assert_eq!(ok("0.1m"), Duration::from_secs(6));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("0.0000000019s"), Duration::from_nanos(1));
        assert_eq!(ok("1.0000000001m"), Duration::new(60, 6));
        assert_eq!(ok("0ms"), Duration::ZERO);
        let bad = |text| parse_duration("--drain-timeout", text).unwrap_err();
        for text in ["", "s", ".", "1..5s", "1.5.5s", "-1s"] {
            assert!(bad(text).contains("expected a duration like"), "{text:?}");
        }
        for text in ["1.5x", "5sec", "1h"] {
            assert!(bad(text).contains("unit must be ms, s or m"), "{text:?}");
        }
        for text in [
            "99999999999999999999999m",
            "1000000000000000000000000000000000000000s",
        ] {
            assert!(bad(text).contains("too long a duration"), "{text:?}");
        }
        assert!(bad("1x").starts_with("--drain-timeout \"1x\""));
    }
}
