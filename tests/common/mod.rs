//! Shared by the integration tests: start the real example binary, read its event log, send it
//! signals, talk HTTP/1.1 to it with a tiny blocking client, and generate load from threads.
//! Every process a test starts is SIGKILLed when its [`Server`] guard drops, even on failure.
//!
//! | module | serves |
//! |---|---|
//! | `process` | starting the example, its log, signals, restarts, scratch directories |
//! | `log` | the one parser of the example's event lines |
//! | `procfs` | `/proc` inspection: liveness, zombies, fds, threads, CPU, socket queues |
//! | `client` | the blocking HTTP/1.1 client and its replies |
//! | `load` | client threads in a loop, and their counts |
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;
use std::time::Duration;

pub use rustix::process::Signal;

pub mod authority;
pub mod client;
pub mod h2;
pub mod load;
pub mod log;
pub mod process;
pub mod procfs;

pub use client::*;
pub use load::*;
pub use log::child_pid;
pub use process::*;
pub use procfs::*;

/// Generous bound for anything that normally takes milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Path of an example binary; `cargo test` builds the examples next to the test binaries.
pub fn example(name: &str) -> PathBuf {
    let mut path = std::env::current_exe().expect("test binary path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.push("examples");
    path.push(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo test`, which builds examples",
        path.display()
    );
    path
}
