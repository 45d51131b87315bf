//! hyper on baton against hyper on tokio: `examples/hyper.rs` (feature `hyper`, the core
//! alone beside it) and the tokio peer (`benches/tokio-peer`, tokio `current_thread` + hyper
//! 1), the same `GET /hello` service. Per round and server, interleaved: keep-alive requests
//! (64 connections) and a connection per request (16 clients), per server CPU-second, and
//! failed requests; no restarts (the restart tests are `tests/hyper.rs`).

use std::path::Path;

use crate::load::Mode;
use crate::procs::{self, Flavor, Running};
use crate::{Plan, interleaved, load_for, per_cpu_second};

/// baton's hyper example and the tokio peer.
fn flavors(root: &Path) -> [Flavor; 2] {
    crate::release_build(
        root,
        &[
            "--no-default-features",
            "--features",
            "hyper",
            "--example",
            "hyper",
        ],
        None,
        "the hyper example",
    );
    let peer = root.join("benches/tokio-peer");
    let manifest = peer.join("Cargo.toml");
    crate::release_build(
        root,
        &["--manifest-path", manifest.to_str().expect("a UTF-8 path")],
        None,
        "the tokio peer",
    );
    [
        Flavor {
            name: "hyper on baton",
            binary: root.join("target/release/examples/hyper"),
            prefix: "baton",
            args: Vec::new(),
            addr: "127.0.0.1:0",
            features: "hyper",
        },
        Flavor {
            name: "hyper on tokio (peer)",
            binary: peer.join("target/release/tokio-peer"),
            prefix: "peer",
            args: Vec::new(),
            addr: "127.0.0.1:0",
            features: "",
        },
    ]
}

/// The section, as Markdown.
pub fn scenarios(root: &Path, plan: &Plan, cpu: Option<usize>) -> String {
    let flavors = flavors(root);
    let modes = [
        (Mode::KeepAlive, plan.keep_alive_clients),
        (Mode::PerRequest, plan.per_request_clients),
    ];
    // [flavor][mode]: per CPU-second, per round; failures over all rounds.
    let mut per_cpu = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut failed = [[0usize; 2]; 2];
    for (run, index) in interleaved(plan.runs, flavors.len()) {
        let flavor = &flavors[index];
        eprintln!(
            "[bench] hyper run {}/{}: {}",
            run + 1,
            plan.runs,
            flavor.name
        );
        let server = Running::start(flavor, cpu);
        for (m, (mode, clients)) in modes.iter().enumerate() {
            let before = procs::cpu(server.pid);
            let outcome = load_for(server.addr, None, *mode, *clients, plan.steady, |_| {});
            let used = procs::cpu(server.pid).saturating_sub(before).as_secs_f64();
            let rate = per_cpu_second(outcome.samples.len() as f64, used);
            eprintln!("[bench]   {mode:?}: {rate:.0} requests per CPU-second");
            per_cpu[index][m].push(rate);
            failed[index][m] += outcome.failures.len();
        }
    }
    let mut out = String::from(
        "\n## hyper on baton against hyper on tokio (`-- --hyper`)\n\n\
         | | keep-alive, requests per server CPU-second (thousands) | ratio to the peer (per round) | a connection per request (thousands) | ratio | failed requests |\n\
         |---|---|---|---|---|---|\n",
    );
    for (index, flavor) in flavors.iter().enumerate() {
        let ratio = |m: usize| {
            let ratios: Vec<f64> = per_cpu[index][m]
                .iter()
                .zip(&per_cpu[1][m])
                .map(|(own, peer)| if *peer > 0.0 { own / peer } else { 0.0 })
                .collect();
            median_range(&ratios)
        };
        let thousands = |m: usize| {
            median_range(
                &per_cpu[index][m]
                    .iter()
                    .map(|x| x / 1e3)
                    .collect::<Vec<_>>(),
            )
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            flavor.name,
            thousands(0),
            ratio(0),
            thousands(1),
            ratio(1),
            failed[index][0] + failed[index][1]
        ));
    }
    out.push_str(&format!(
        "\n{} interleaved rounds of {:?} per mode; medians (ranges). The peer sets no hyper \
         timer (no header read timeout); baton's hyper serves with one (30 s).\n",
        plan.runs, plan.steady
    ));
    out
}

fn median_range(values: &[f64]) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "{:.2} ({:.2}-{:.2})",
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1]
    )
}
