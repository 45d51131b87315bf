//! hyper services on baton (feature `hyper`): a hyper 1.x [`Service`] served on the core,
//! HTTP/1.1 and HTTP/2 without TLS (h2c, told apart by the HTTP/2 connection preface) on the
//! same listeners, restarted with zero downtime.
//!
//! At a restart's drain:
//! - an idle HTTP/1 keep-alive connection moves to the successor with the bytes hyper read
//!   and had not used (any size, up to `Config::max_held_bytes`); a busy one moves once its
//!   response is written. Without a successor that takes it, it answers what comes next with
//!   `Connection: close`;
//! - an HTTP/2 connection gets hyper's graceful GOAWAY (the last stream id at the maximum,
//!   then the real one): open streams finish, and the client sends new ones to a new
//!   connection, which the successor accepts;
//! - every request counts for the drain from its head until its body's end is written: the
//!   report says how many the drain timeout cut, and a cut request whose response had not
//!   started gets a 503 with `Connection: close` (HTTP/1) or its stream refused
//!   (`REFUSED_STREAM`, which a client may retry: it was never processed) (HTTP/2).
//!
//! Everything runs on the thread that awaits [`serve`] ([`crate::Baton::serve_local`]): the
//! core, each connection's task and HTTP/2's stream tasks, on one local executor; hyper's
//! timer is async-io's. The service need not be `Send`.
//!
//! HTTP upgrades go through hyper's `hyper::upgrade::on`: the upgraded connection is the
//! application's, which hears of the drain from [`crate::drain()`]. Not yet: TLS listeners
//! (h2 by ALPN); a `tls:` listener's connections are closed with a warning.

mod conn;
mod rt;

use std::error::Error as StdError;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use smol::LocalExecutor;

use crate::event::{Event, Level};
use crate::{Baton, Connection, Program, Report, Resumed};

pub use conn::Body;

/// What every connection of the process shares.
struct Shared<S> {
    service: Rc<S>,
    http1: http1::Builder,
    http2: http2::Builder<rt::Exec>,
}

/// The program: each connection a task on the serving thread's executor.
struct Hyper<S> {
    shared: Rc<Shared<S>>,
    executor: Rc<LocalExecutor<'static>>,
    events: Rc<dyn Fn(&Event<'_>)>,
}

/// Serves `service` on `baton`'s listeners until a restart hands over to a successor or a
/// shutdown signal arrives, then drains (see the module's notes) and returns what the drain
/// cut short. Blocks its thread while idle: give it a thread of its own (`smol::block_on`
/// in `main`).
pub async fn serve<S, B>(baton: Baton, service: S) -> io::Result<Report>
where
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let executor = Rc::new(LocalExecutor::new());
    let timer = rt::Timer::default();
    executor.spawn(timer.clone().sweep()).detach();
    let mut http1 = http1::Builder::new();
    http1.timer(timer.clone());
    let mut http2 = http2::Builder::new(rt::Exec(executor.clone()));
    http2.timer(timer);
    let program = Hyper {
        shared: Rc::new(Shared {
            service: Rc::new(service),
            http1,
            http2,
        }),
        executor: executor.clone(),
        events: baton.events(),
    };
    baton.serve_local(program, executor).await
}

impl<S, B> Program for Hyper<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn accepted(&self, connection: Connection) {
        if connection.tls {
            (self.events)(&Event::Program {
                level: Level::Warn,
                source: "hyper",
                message: &format!(
                    "closed a connection from {} on a tls: listener: baton::hyper serves \
                     without TLS",
                    connection.stream.peer()
                ),
            });
            return;
        }
        let task = conn::serve(self.shared.clone(), connection.stream, connection.drain);
        self.executor.spawn(task).detach();
    }

    fn resumed(&self, resumed: Resumed) {
        let shared = self.shared.clone();
        let drain = resumed.drain().clone();
        match resumed.kind() {
            conn::HTTP1 => {
                // (Its held bytes, hyper's unread buffer, come first from the stream.)
                let io = rt::Io::new(resumed.take(), Vec::new());
                self.executor.spawn(conn::http1(shared, io, drain)).detach();
            }
            conn::UNKNOWN => {
                let task = conn::serve(shared, resumed.take(), drain);
                self.executor.spawn(task).detach();
            }
            // Another program's kind: dropped untaken, which baton reports.
            _ => {}
        }
    }
}
