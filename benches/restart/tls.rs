//! TLS: handshakes and keep-alive requests per server CPU-second, baton against the peer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::load::Mode;
use crate::procs::{Flavor, Running};
use crate::*;

/// TLS: handshakes per second (a connection per request) and keep-alive requests per server
/// CPU-second, baton (built with `tls`) against the peer with tokio-rustls, same provider
/// (ring), same certificate.
pub(crate) fn tls_scenarios(root: &Path, plan: &Plan, cpu: Option<usize>) -> String {
    use futures_rustls::rustls;
    let target = root.join("target/bench-tls");
    release_build(
        root,
        &["--example", "fixture", "--features", "tls"],
        Some(&target),
        "the example with tls",
    );
    let peer_target = root.join("benches/tokio-peer/target-tls");
    let manifest = root.join("benches/tokio-peer/Cargo.toml");
    let manifest = manifest.to_str().expect("a UTF-8 path");
    release_build(
        root,
        &["--manifest-path", manifest, "--features", "tls"],
        Some(&peer_target),
        "the tokio peer with tls",
    );
    // A throwaway CA and a certificate for 127.0.0.1, shared by both servers.
    let dir = root.join("target/bench/tls");
    std::fs::create_dir_all(&dir).expect("create target/bench/tls");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let leaf = leaf.signed_by(&key, &issuer).expect("leaf");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, leaf.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = Arc::new(client);

    let files = vec![
        "--tls-cert".to_owned(),
        cert_path.display().to_string(),
        "--tls-key".to_owned(),
        key_path.display().to_string(),
    ];
    let flavors = [
        Flavor {
            name: "baton",
            binary: target.join("release/examples/fixture"),
            prefix: "baton",
            args: files.clone(),
            addr: "tls:127.0.0.1:0",
            features: "tls",
        },
        Flavor {
            name: "tokio peer",
            binary: peer_target.join("release/tokio-peer"),
            prefix: "peer",
            args: files,
            addr: "tls:127.0.0.1:0",
            features: "tls",
        },
    ];
    let mut values: Vec<BTreeMap<&str, Vec<f64>>> = vec![BTreeMap::new(), BTreeMap::new()];
    for (run, index) in interleaved(plan.runs, flavors.len()) {
        eprintln!(
            "[bench] TLS run {}/{}: {}",
            run + 1,
            plan.runs,
            flavors[index].name
        );
        let server = Running::start(&flavors[index], cpu);
        let scenarios = [
            ("handshakes", Mode::PerRequest, plan.per_request_clients),
            ("keep_alive", Mode::KeepAlive, plan.keep_alive_clients),
        ];
        for (name, mode, clients) in scenarios {
            let before = procs::cpu(server.pid);
            let outcome = load_for(
                server.addr,
                Some(client.clone()),
                mode,
                clients,
                plan.steady,
                |_| {},
            );
            let cpu = procs::cpu(server.pid).saturating_sub(before).as_secs_f64();
            let mut latencies: Vec<u64> = outcome.samples.iter().map(|s| s.latency_us).collect();
            let n = latencies.len() as f64;
            let entry = &mut values[index];
            entry
                .entry(if name == "handshakes" {
                    "hs_rps"
                } else {
                    "tka_rps"
                })
                .or_default()
                .push(n / outcome.elapsed.as_secs_f64());
            entry
                .entry(if name == "handshakes" {
                    "hs_per_cpu_s"
                } else {
                    "tka_per_cpu_s"
                })
                .or_default()
                .push(per_cpu_second(n, cpu));
            entry
                .entry(if name == "handshakes" {
                    "hs_p99_ms"
                } else {
                    "tka_p99_ms"
                })
                .or_default()
                .push(report::percentile(&mut latencies, 99.0) / 1e3);
            entry
                .entry(if name == "handshakes" {
                    "hs_failed"
                } else {
                    "tka_failed"
                })
                .or_default()
                .push(outcome.failures.len() as f64);
            eprintln!(
                "[bench]   TLS {name}: {:.0} req/s",
                n / outcome.elapsed.as_secs_f64()
            );
        }
    }
    let rows = [
        (
            "TLS handshakes/s (a connection per request, 16 clients) ↑",
            "hs_rps",
        ),
        ("TLS handshakes per server CPU-second ↑", "hs_per_cpu_s"),
        (
            "TLS connection per request: p99 latency (ms) ↓",
            "hs_p99_ms",
        ),
        ("TLS keep-alive, 64 conns: req/s ↑", "tka_rps"),
        (
            "TLS keep-alive: requests per server CPU-second ↑",
            "tka_per_cpu_s",
        ),
        ("TLS keep-alive: p99 latency (ms) ↓", "tka_p99_ms"),
        ("TLS failed requests per run ↓", "hs_failed"),
    ];
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut out = String::from("\n## TLS (rustls + ring on both sides, same certificate)\n\n");
    out.push_str("| figure | baton | tokio peer | baton / peer |\n|---|---:|---:|---:|\n");
    for (label, key) in rows {
        let a = values[0].get(key).map_or(f64::NAN, median);
        let b = values[1].get(key).map_or(f64::NAN, median);
        let ratio = if b != 0.0 && a.is_finite() && b.is_finite() {
            format!("{:.2}", a / b)
        } else {
            "-".into()
        };
        out.push_str(&format!("| {label} | {a:.1} | {b:.1} | {ratio} |\n"));
    }
    out
}
