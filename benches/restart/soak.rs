//! `--soak`: many restarts under mixed load; nothing fails, memory and fds stay flat.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::load::Mode;
use crate::procs::Running;
use crate::*;

/// slow requests, POST bodies), checking that nothing fails and that the serving process's
/// RSS and fd count stay flat from the first restart to the last.
pub(crate) fn soak() {
    const RESTARTS: usize = 200;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    release_build(&root, &["--example", "fixture"], None, "the example");
    let flavor = crate::baton_flavor(&root);
    let pinned =
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 && procs::pin_self(1);
    let mut server = Running::start(&flavor, pinned.then_some(0));
    eprintln!("[soak] {RESTARTS} restarts under mixed load (16 clients)");
    let mut samples: Vec<(u64, usize)> = Vec::new();
    let started = Instant::now();
    let outcome = load_for(server.addr, None, Mode::Mixed, 16, Duration::ZERO, |_| {
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..RESTARTS {
            server.restart();
            // Let the new process take the load before measuring it.
            std::thread::sleep(Duration::from_millis(250));
            let rss = procs::status(server.pid, "VmRSS");
            let fds =
                std::fs::read_dir(format!("/proc/{}/fd", server.pid)).map_or(0, |d| d.count());
            samples.push((rss, fds));
            if (i + 1) % 50 == 0 {
                eprintln!(
                    "[soak]   {} restarts, RSS {:.2} MB, {fds} fds",
                    i + 1,
                    rss as f64 / 1e6
                );
            }
        }
    });
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let max_rss = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for failure in &outcome.failures {
        *kinds.entry(format!("{:?}", failure.kind)).or_default() += 1;
    }
    let report = format!(
        "## Soak: {RESTARTS} restarts under mixed load\n\n\
         | figure | value |\n|---|---:|\n\
         | duration | {:.0} s |\n\
         | requests answered | {} |\n\
         | failed requests | {} {} |\n\
         | RSS of the serving process after restart 1 / {RESTARTS} (max) | {:.2} / {:.2} ({:.2}) MB |\n\
         | fds of the serving process after restart 1 / {RESTARTS} | {} / {} |\n",
        started.elapsed().as_secs_f64(),
        outcome.samples.len(),
        outcome.failures.len(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!("{kinds:?}")
        },
        first.0 as f64 / 1e6,
        last.0 as f64 / 1e6,
        max_rss as f64 / 1e6,
        first.1,
        last.1,
    );
    println!("{report}");
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).expect("create target/bench");
    std::fs::write(out.join("soak.md"), &report).expect("write soak.md");
    assert!(
        outcome.failures.is_empty(),
        "failed requests during the soak"
    );
    // Connections come and go (a quarter of the clients reconnect for every request): allow
    // that much jitter, not a trend.
    assert!(
        last.1 <= first.1 + 4,
        "the fd count grew from {} to {}",
        first.1,
        last.1
    );
}
