//! The limit: a raw epoll server with a fixed response, no runtime, no HTTP parser beyond
//! finding the end of each head. What the kernel and the loopback cost for this load; every
//! server's figures sit between it and zero.
//!
//! The bench runs it as its own binary, `<bench> --raw-epoll-server --addr 127.0.0.1:0`:
//! edge-triggered epoll, `accept4` until `EAGAIN`, one `recv` until `EAGAIN` per readiness,
//! one `send` with a response per complete head, close after a head with `Connection: close`.

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

const BODY: &str = "Hello from raw epoll!\n";

/// Serves until killed.
pub fn serve() -> ! {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .iter()
        .position(|a| a == "--addr")
        .and_then(|i| args.get(i + 1))
        .map_or("127.0.0.1:0", String::as_str);
    let listener = TcpListener::bind(addr).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let closing = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    eprintln!(
        "raw[{}]: listening on {} (raw epoll)",
        std::process::id(),
        listener.local_addr().expect("bound")
    );
    let lfd = listener.as_raw_fd();
    // SAFETY: epoll_create1 takes no pointers; the result is checked.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    add(epoll, lfd, libc::EPOLLIN as u32);
    // Per connection: what was read and not yet a whole head.
    let mut partial: HashMap<RawFd, Vec<u8>> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        // SAFETY: `events` is a valid buffer of `events.len()` entries for the kernel to fill.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            continue; // EINTR
        }
        for event in &events[..n as usize] {
            let fd = event.u64 as RawFd;
            if fd == lfd {
                loop {
                    // SAFETY: null address pointers are allowed; the result is checked.
                    let conn = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if conn < 0 {
                        break;
                    }
                    let one: libc::c_int = 1;
                    // SAFETY: `one` is a c_int that outlives the call; its size is passed.
                    unsafe {
                        libc::setsockopt(
                            conn,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            (&one as *const libc::c_int).cast(),
                            size_of::<libc::c_int>() as libc::socklen_t,
                        )
                    };
                    add(epoll, conn, (libc::EPOLLIN | libc::EPOLLET) as u32);
                    partial.insert(conn, Vec::new());
                }
                continue;
            }
            let Some(pending) = partial.get_mut(&fd) else {
                continue;
            };
            let mut close = false;
            loop {
                // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
                let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if got <= 0 {
                    // 0: the client closed; -1: EAGAIN (edge-triggered: wait for the next
                    // edge) or an error.
                    close |= got == 0
                        || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock;
                    break;
                }
                pending.extend_from_slice(&buf[..got as usize]);
                if (got as usize) < buf.len() {
                    break;
                }
            }
            out.clear();
            while let Some(end) = find(pending, b"\r\n\r\n") {
                let head = &pending[..end];
                let asks_close = head
                    .windows(17)
                    .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
                out.extend_from_slice(if asks_close {
                    closing.as_bytes()
                } else {
                    response.as_bytes()
                });
                pending.drain(..end + 4);
                if asks_close {
                    close = true;
                    break;
                }
            }
            if !out.is_empty() {
                // SAFETY: `out` is valid for `out.len()` bytes of reads.
                unsafe { libc::send(fd, out.as_ptr().cast(), out.len(), libc::MSG_NOSIGNAL) };
            }
            if close {
                partial.remove(&fd);
                // SAFETY: `fd` is a connection this loop accepted and no longer uses.
                unsafe { libc::close(fd) };
            }
        }
    }
}

fn add(epoll: RawFd, fd: RawFd, events: u32) {
    let mut event = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: `event` is a valid epoll_event for the duration of the call.
    let added = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    assert_eq!(added, 0, "epoll_ctl");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
