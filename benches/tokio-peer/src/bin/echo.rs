//! The echo benchmark's peer: the same line echo as baton's `examples/echo.rs` (each line `l`
//! answered `<pid>: l`, every whole line's answer in one write) on tokio `current_thread`, one
//! task per connection. No restarts: it measures the I/O path only.
//!
//! Run with: `cargo run --release --manifest-path benches/tokio-peer/Cargo.toml --bin echo -- --addr 127.0.0.1:7000`

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut addr = "127.0.0.1:7000".to_owned();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv.next().unwrap_or_default();
        match flag.as_str() {
            "--addr" => addr = value,
            // Accepted for the bench's common command line; nothing drains here.
            "--drain-timeout" => {}
            other => panic!("unknown option {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&addr).await?;
        let pid = std::process::id();
        eprintln!("peer[{pid}]: listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(echo(stream, pid));
        }
    })
}

async fn echo(mut stream: TcpStream, pid: u32) {
    let prefix = format!("{pid}: ");
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut answer = Vec::new();
    loop {
        answer.clear();
        let mut used = 0;
        while let Some(end) = read[used..].iter().position(|&b| b == b'\n') {
            let line = &read[used..used + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            answer.extend_from_slice(prefix.as_bytes());
            answer.extend_from_slice(line);
            answer.push(b'\n');
            used += end + 1;
        }
        read.drain(..used);
        if !answer.is_empty() && stream.write_all(&answer).await.is_err() {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read.extend_from_slice(&chunk[..n]),
        }
    }
}
