//! A small router on baton, the way gin + endless serve Go services: routes by method and path
//! with `:params`, JSON responses, a body echo, a health check that says when the process is
//! draining, and hooks that log each step of a restart.
//!
//! Run with: `cargo run --example router [-- --addr 127.0.0.1:8080 --idle-grace 500ms]`
//! (`--no-hand-over`: close keep-alive connections on a restart instead of moving them)
//!
//! ```text
//! curl localhost:8080/users/42          {"id":42,"name":"user 42","served_by":4242}
//! curl -d 'hi' localhost:8080/echo      hi
//! curl localhost:8080/health            ok (or "draining", with 503, during a drain)
//! curl localhost:8080/slow/1500         answers after 1.5 s
//! ```

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use http_types::{Method, Request, Response, StatusCode};

type Params = Vec<(&'static str, String)>;
type Reply = Pin<Box<dyn Future<Output = http_types::Result<Response>>>>;
type Handler = Box<dyn Fn(Request, Params) -> Reply>;

/// Routes matched in the order added: method, then path segments (`:name` captures one).
#[derive(Default)]
struct Router {
    routes: Vec<(Method, Vec<&'static str>, Handler)>,
}

impl Router {
    fn route<F, Fut>(mut self, method: Method, pattern: &'static str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> Fut + 'static,
        Fut: Future<Output = http_types::Result<Response>> + 'static,
    {
        let segments = pattern.split('/').filter(|s| !s.is_empty()).collect();
        self.routes.push((
            method,
            segments,
            Box::new(move |req, params| Box::pin(handler(req, params))),
        ));
        self
    }

    async fn serve(&self, req: Request) -> http_types::Result<Response> {
        let path: Vec<String> = req
            .url()
            .path_segments()
            .into_iter()
            .flatten()
            .map(str::to_owned)
            .collect();
        let mut path_matched = false;
        for (method, pattern, handler) in &self.routes {
            let Some(params) = capture(pattern, &path) else {
                continue;
            };
            path_matched = true;
            if *method == req.method() {
                return handler(req, params).await;
            }
        }
        let status = if path_matched {
            StatusCode::MethodNotAllowed
        } else {
            StatusCode::NotFound
        };
        Ok(Response::new(status))
    }
}

fn capture(pattern: &[&'static str], path: &[String]) -> Option<Params> {
    let path: Vec<&String> = path.iter().filter(|s| !s.is_empty()).collect();
    if pattern.len() != path.len() {
        return None;
    }
    let mut params = Vec::new();
    for (want, got) in pattern.iter().zip(path) {
        match want.strip_prefix(':') {
            Some(name) => params.push((name, got.clone())),
            None if want == got => {}
            None => return None,
        }
    }
    Some(params)
}

fn param<T: std::str::FromStr>(params: &Params, name: &str) -> http_types::Result<T> {
    let value = params
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    value.parse().map_err(|_| {
        http_types::Error::from_str(StatusCode::BadRequest, format!("bad {name}: {value:?}"))
    })
}

fn json(value: serde_json::Value) -> Response {
    let mut response = Response::new(StatusCode::Ok);
    response.set_body(value.to_string());
    response.set_content_type(http_types::mime::JSON);
    response
}

fn router(pid: u32) -> Router {
    Router::default()
        .route(Method::Get, "/health", |_, _| async {
            if baton::drain().is_draining() {
                let mut response = Response::new(StatusCode::ServiceUnavailable);
                response.set_body("draining\n");
                Ok(response)
            } else {
                Ok(Response::from("ok\n"))
            }
        })
        .route(Method::Get, "/users/:id", move |_, params| async move {
            let id: u64 = param(&params, "id")?;
            Ok(json(
                serde_json::json!({ "id": id, "name": format!("user {id}"), "served_by": pid }),
            ))
        })
        .route(Method::Post, "/echo", |mut req, _| async move {
            let body = req.body_bytes().await?;
            Ok(Response::from(body))
        })
        .route(Method::Get, "/slow/:ms", move |_, params| async move {
            let ms: u64 = param::<u64>(&params, "ms")?.min(60_000);
            async_io::Timer::after(Duration::from_millis(ms)).await;
            Ok(Response::from(format!("slow {ms} ms from {pid}\n")))
        })
}

fn main() -> ExitCode {
    let mut addrs = Vec::new();
    let mut idle_grace = Duration::from_millis(500);
    let mut hand_over = true;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-hand-over" {
            hand_over = false;
            continue;
        }
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--addr" => addrs.push(value),
            "--idle-grace" => match value.strip_suffix("ms").and_then(|ms| ms.parse().ok()) {
                Some(ms) => idle_grace = Duration::from_millis(ms),
                None => {
                    eprintln!("--idle-grace {value:?}: expected milliseconds, like 500ms");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!(
                    "usage: router [--addr HOST:PORT]... [--idle-grace 500ms] [--no-hand-over]"
                );
                return ExitCode::from(2);
            }
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:8080".into());
    }
    // The core: listeners, restarts and their hooks.
    let baton = match baton::Baton::bind_all(&addrs) {
        Ok(baton) => baton,
        Err(error) => {
            eprintln!("router: {error}");
            return ExitCode::FAILURE;
        }
    };
    let pid = std::process::id();
    let log = move |what: String| eprintln!("router[{pid}]: {what}");
    let baton = baton
        .hand_over_connections(hand_over)
        .on_spawn(move || {
            log("hook: before spawning a successor".into());
            async {}
        })
        .on_ready(move |child| {
            log(format!("hook: successor {child} is ready"));
            async {}
        })
        .on_drain(move || {
            log("hook: draining (a real service would close its pools here)".into());
            async {}
        })
        .on_exit(move |report| {
            log(format!("hook: exiting, {} requests cut", report.cut));
            async {}
        });
    // The HTTP server on it.
    let server = baton::Server::on(baton).idle_grace(idle_grace);
    let router = Rc::new(router(pid));
    let served = server.serve(move |req| {
        let router = router.clone();
        async move { router.serve(req).await }
    });
    match smol::block_on(served) {
        Ok(report) if report.is_clean() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("router: {error}");
            ExitCode::FAILURE
        }
    }
}
