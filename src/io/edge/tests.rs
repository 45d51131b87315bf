use super::*;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

fn pair() -> (Conn, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (conn(listener.accept().unwrap().0), client)
}

/// A read that finds nothing waits for the client's bytes, woken by the edge.
#[test]
fn a_read_waits_for_the_next_edge() {
    let (server, mut client) = pair();
    let mut buf = [0u8; 64];
    let err = server.try_read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        client.write_all(b"ping").unwrap();
        client
    });
    let n = smol::block_on(std::future::poll_fn(|cx| server.poll_read(cx, &mut buf)));
    assert_eq!(&buf[..n.unwrap()], b"ping");
    drop(writer.join().unwrap());
    // The client's close is an edge too: the read sees the end.
    let n = smol::block_on(std::future::poll_fn(|cx| server.poll_read(cx, &mut buf)));
    assert_eq!(n.unwrap(), 0);
}

/// Bytes and the client's FIN in one edge: the short read that takes the bytes does
/// not mark the connection drained, so a wait for more ends at once with the end.
#[test]
fn a_close_seen_with_the_last_bytes_is_not_lost() {
    let (server, mut client) = pair();
    client.write_all(b"last").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    // Until the drive has dispatched that edge (the close) for this connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !server.edge.slots().entries[server.index as usize]
        .read
        .closed
    {
        assert!(std::time::Instant::now() < deadline, "no close event");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut buf = [0u8; 64];
    assert_eq!(server.try_read(&mut buf).unwrap(), 4);
    let waited = smol::block_on(async {
        let wait = server.readable();
        let timeout = async {
            async_io::Timer::after(Duration::from_secs(5)).await;
        };
        smol::future::or(
            async {
                wait.await;
                true
            },
            async {
                timeout.await;
                false
            },
        )
        .await
    });
    assert!(waited, "the wait after the last bytes did not end");
    assert_eq!(server.try_read(&mut buf).unwrap(), 0);
}

/// A write that fills the socket's buffers waits until the client reads, then goes on.
#[test]
fn a_full_write_waits_for_room() {
    let (server, mut client) = pair();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    smol::block_on(async {
        // Until the kernel's buffers are full and the write waits: then read it all.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = client.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        while sent < 8 * 1024 * 1024 {
            let n = std::future::poll_fn(|cx| server.poll_write(cx, &chunk))
                .await
                .unwrap();
            sent += n;
        }
        server.shutdown_write().unwrap();
        assert_eq!(reader.join().unwrap(), sent);
    });
}
/// A waker that counts its wakes.
struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn accepted(edge: &Arc<Edge>) -> (Conn, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let server = listener.accept().unwrap().0;
    server.set_nonblocking(true).unwrap();
    (edge.register(server).unwrap(), client)
}

/// An event still queued for a connection whose slot was freed and reused (its fd kept
/// open elsewhere, as a handed-over connection's is) wakes nothing of the new one.
#[test]
fn a_stale_event_for_a_reused_slot_wakes_nothing() {
    let edge = Edge::new().unwrap();
    let (old, mut old_client) = accepted(&edge);
    let index = old.index;
    // Another process keeps the file open (so its registration stays), and this one
    // drops its copy without a DEL: the case of a moved connection before the DEL.
    let kept = old.fd.try_clone().unwrap();
    drop(old);
    let (new, _new_client) = accepted(&edge);
    assert_eq!(new.index, index, "the slot is reused");
    let mut buf = [0u8; 16];
    assert_eq!(
        new.try_read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
    let waker = std::task::Waker::from(count.clone());
    let mut wait = Box::pin(new.readable());
    let mut cx = Context::from_waker(&waker);
    assert!(wait.as_mut().poll(&mut cx).is_pending());
    // The old registration's event: the old generation, in the reused slot.
    old_client.write_all(b"stale").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while edge.poll_now().unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "no event came");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(count.0.load(Ordering::SeqCst), 0, "woken by a stale event");
    assert!(wait.as_mut().poll(&mut cx).is_pending());
    drop(kept);
}

/// Two tasks waiting to read one connection are both woken by its next edge.
#[test]
fn two_waiters_on_one_direction_are_both_woken() {
    let edge = Edge::new().unwrap();
    let (server, mut client) = accepted(&edge);
    let mut buf = [0u8; 16];
    assert!(server.try_read(&mut buf).is_err());
    let counts: Vec<Arc<Count>> = (0..2)
        .map(|_| Arc::new(Count(std::sync::atomic::AtomicUsize::new(0))))
        .collect();
    let mut waits: Vec<_> = (0..2).map(|_| Box::pin(server.readable())).collect();
    for (wait, count) in waits.iter_mut().zip(&counts) {
        let waker = std::task::Waker::from(count.clone());
        assert!(
            wait.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
    }
    client.write_all(b"both").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while edge.poll_now().unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "no event came");
        std::thread::sleep(Duration::from_millis(1));
    }
    for count in &counts {
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "a waiter was dropped");
    }
    let waker = std::task::Waker::noop();
    for wait in &mut waits {
        assert!(
            wait.as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_ready()
        );
    }
}
