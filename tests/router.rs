//! The router example: routes, JSON, path params, the draining health check and the hooks,
//! across a restart.

mod common;

use std::process::Command;

use common::{Client, DEADLINE, Server, example, wait_gone};

fn router(args: &[&str]) -> Server {
    let mut command = Command::new(example("router"));
    command.args(["--addr", "127.0.0.1:0"]).args(args);
    Server::start(command)
}

#[test]
fn routes_params_json_and_echo() {
    let server = router(&[]);
    let mut client = Client::new(server.addr);
    let user = client.get("/users/42").unwrap();
    assert_eq!(user.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&user.body).unwrap();
    assert_eq!(json["id"], 42);
    assert_eq!(json["name"], "user 42");
    assert_eq!(json["served_by"], server.pid);
    let echo = client
        .send(&format!(
            "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\n\r\nhello",
            server.addr
        ))
        .unwrap();
    assert_eq!(echo.body, "hello");
    assert_eq!(client.get("/health").unwrap().body, "ok\n");
    assert_eq!(client.get("/users/abc").unwrap().status, 400);
    assert_eq!(client.get("/nope").unwrap().status, 404);
    let wrong_method = client.send(&format!(
        "DELETE /users/1 HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    ));
    assert_eq!(wrong_method.unwrap().status, 405);
    assert_eq!(client.connects, 1);
}

#[test]
fn health_says_draining_and_hooks_run_in_order_across_a_restart() {
    // A draining process answers its own idle connections only if it keeps them: no hand-over.
    let server = router(&["--idle-grace", "10000ms", "--no-hand-over"]);
    let old = server.pid;
    // A: an idle keep-alive connection to the old process, for asking it about its health.
    let mut health = Client::new(server.addr);
    assert_eq!(health.get("/health").unwrap().body, "ok\n");
    // B: a slow request in flight on the old process keeps it draining.
    let mut slow = Client::new(server.addr);
    assert_eq!(slow.get("/health").unwrap().status, 200);
    slow.send_only(&format!(
        "GET /slow/1500 HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr
    ))
    .unwrap();
    common::wait_until_read(server.addr, slow.local_addr().unwrap());

    let new = server.restart(old);
    let draining = health.get("/health").unwrap();
    assert_eq!(
        (draining.status, draining.body.as_str()),
        (503, "draining\n")
    );
    assert!(draining.closes());
    let user = common::get(server.addr, "/users/7").unwrap();
    let json: serde_json::Value = serde_json::from_str(&user.body).unwrap();
    assert_eq!(json["served_by"], new);
    let slow = slow.receive().unwrap();
    assert_eq!(slow.body, format!("slow 1500 ms from {old}\n"));
    assert!(wait_gone(old, DEADLINE));
    server.wait_line(&format!("router[{old}]: hook: exiting"));
    let hooks: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.starts_with(&format!("router[{old}]: hook:")))
        .map(|l| l.split("hook: ").nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(
        hooks,
        [
            "before spawning a successor".to_owned(),
            format!("successor {new} is ready"),
            "draining (a real service would close its pools here)".to_owned(),
            "exiting, 0 requests cut".to_owned(),
        ]
    );
}
