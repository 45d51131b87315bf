//! Heap allocations per request for `GET /hello` on a keep-alive connection, counted by a
//! global allocator in the serving thread only. The server runs in this process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};

mod common;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a side
// effect that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn allocations_per_keep_alive_request_are_few_and_flat() {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        COUNTED.with(|c| c.set(true));
        let server = baton::Server::bind("127.0.0.1:0")
            .expect("bind")
            .core(|baton| baton.on_event(|_| {}));
        sender
            .send(server.local_addr().expect("a TCP listener"))
            .unwrap();
        let pid = std::process::id();
        let served = smol::block_on(server.serve(move |_req| async move {
            Ok(http_types::Response::from(format!("Hello from {pid}!\n")))
        }));
        drop(served);
    });
    let addr = receiver.recv().unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let request = format!("GET /hello HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
    let mut run = |n: u64| {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..n {
            stream.write_all(request.as_bytes()).unwrap();
            let reply = common::read_reply(&mut reader).unwrap();
            assert_eq!(reply.status, 200);
        }
        // The last response is read, so the server has finished that request's work except
        // dropping it; one more round trip would not change the per-request figure.
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
    };
    run(200); // warm-up: buffers, the cached Url and Date
    let first = run(2000);
    let second = run(2000);
    let (request, response) = http_types_floor();
    eprintln!(
        "allocations per GET /hello: {first:.2}, then {second:.2}; http-types alone: {request:.2} \
         for the request, {response:.2} for the response"
    );
    // Whether the client's next request is already there when the connection looks (the
    // eager read) depends on timing, and so does which thread runs the reactor (async-io's
    // own thread takes it when this one is idle; what it allocates for a wake-up is not
    // counted here): the same binary measures 20.6 in one run and 22.5 in the next. Growth
    // beyond that is what this looks for.
    assert!(
        (first - second).abs() < 2.5,
        "allocations grow with requests: {first} then {second}"
    );
    // Everything beyond http-types' own construction is the codec's and the loop's.
    let ours = first - request - response;
    assert!(
        ours <= 5.0,
        "{ours} allocations per request on top of http-types' {}",
        request + response
    );
}

/// What http-types itself costs for the same exchange (building the request from a cached
/// Url, with its two headers and addresses, and the handler's response): the floor under the
/// server's figure.
fn http_types_floor() -> (f64, f64) {
    let base = http_types::Url::parse("http://127.0.0.1:8080/").unwrap();
    let count = |f: &dyn Fn()| {
        COUNTED.with(|c| c.set(true));
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            f();
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        COUNTED.with(|c| c.set(false));
        (after - before) as f64 / 1000.0
    };
    let request = count(&|| {
        let mut url = base.clone();
        url.set_path("/hello");
        url.set_query(None);
        let mut req = http_types::Request::new(http_types::Method::Get, url);
        req.set_peer_addr(Some("127.0.0.1:50000"));
        req.set_local_addr(Some("127.0.0.1:8080"));
        req.append_header("host", "127.0.0.1:8080");
        req.append_header("accept", "*/*");
        drop(req);
    });
    let response = count(&|| {
        let res = http_types::Response::from(format!("Hello from {}!\n", 4242));
        drop(res);
    });
    (request, response)
}
