//! The hello example itself (the other tests run the fixture, hello with test routes): it
//! serves, counts across a restart (its state moves), restarts by `hello reload` with a
//! keep-alive connection moved, and stops cleanly, in the single process and with workers.

mod common;

use std::process::Command;

use common::{Client, DEADLINE, Scratch, Server, Signal, example, signal, wait_gone};

fn the_hello_example_restarts_with_its_state_and_connections(workers: &str) {
    let scratch = Scratch::new(&format!("hello-example-{workers}"));
    let pid_file = scratch.0.join("hello.pid");
    let pid_arg = pid_file.to_str().unwrap();
    let mut command = Command::new(example("hello"));
    command.args([
        "--addr",
        "127.0.0.1:0",
        "--workers",
        workers,
        "--pid-file",
        pid_arg,
    ]);
    let mut server = Server::start(command);
    let mut client = Client::new(server.addr);
    let first = client.get("/hello").unwrap();
    assert!(first.body.starts_with("Hello from "), "{}", first.body);
    assert!(
        client
            .get("/count")
            .unwrap()
            .body
            .starts_with("count 1 from ")
    );
    assert_eq!(client.get("/nothing").unwrap().status, 404);
    let reload = Command::new(example("hello"))
        .args(["reload", "--pid-file", pid_arg, "--timeout", "10s"])
        .output()
        .unwrap();
    assert!(reload.status.success(), "{reload:?}\n{}", server.dump());
    let after = client.get("/hello").unwrap();
    assert_ne!(after.body, first.body, "still the old process");
    let count = client.get("/count").unwrap();
    assert!(count.body.starts_with("count 2 from "), "{}", count.body);
    assert_eq!(client.connects, 1, "the keep-alive connection did not move");
    let serving: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(serving, Signal::TERM);
    assert!(wait_gone(serving, DEADLINE), "{}", server.dump());
    if workers != "0" {
        assert_eq!(server.wait_exit(DEADLINE), Some(0), "{}", server.dump());
    }
}

#[test]
fn the_hello_example_restarts_with_its_state_and_connections_in_the_single_process() {
    the_hello_example_restarts_with_its_state_and_connections("0");
}

#[test]
fn the_hello_example_restarts_with_its_state_and_connections_with_workers() {
    the_hello_example_restarts_with_its_state_and_connections("1");
}
