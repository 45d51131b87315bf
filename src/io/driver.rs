//! A serving thread that drives itself ([`crate::Baton::serve_local`], which the HTTP server
//! uses): the core's future and the connections' tasks run here, and when neither has
//! anything to do the thread waits on the connections' epoll itself (`epoll_wait`, nothing
//! else), as tokio's does.
//!
//! Waiting in async-io's reactor instead costs four more syscalls around each wait (its
//! timerfd set and re-armed, its notifier read and re-armed) and a re-arm of the epoll's own
//! registration after it fired. Here async-io's reactor is left to its own thread, for what
//! is not a connection (signals, relays, timers, child processes): whatever it wakes on this
//! thread's behalf sets a flag and, if this thread is waiting, writes the epoll's notifier.
//! Connection events, the common case, wake nothing but the tasks they are for, on this
//! thread.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use smol::future::FutureExt as _;

use crate::config::timing::TASKS_BETWEEN_IO_CHECKS;
use crate::io::edge::Edge;
use crate::io::local::Local;

/// What was woken since it last ran, and whether the thread waits on the epoll.
struct Woken {
    core: AtomicBool,
    tasks: AtomicBool,
    waiting: AtomicBool,
    edge: Arc<Edge>,
    /// The epoll failed: the thread parks in `block_on` as usual, its waker in `outer`.
    failed: AtomicBool,
    outer: Mutex<Option<Waker>>,
}

/// The waker of the core's future (`tasks: false`) or of the local tasks (`true`).
struct Flag {
    woken: Arc<Woken>,
    tasks: bool,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let woken = &self.woken;
        match self.tasks {
            true => woken.tasks.store(true, SeqCst),
            false => woken.core.store(true, SeqCst),
        }
        // (Set before the look: a waiting thread sees the flag once the notifier wakes it,
        // and a thread about to wait sees it before it does.)
        if woken.waiting.load(SeqCst) {
            woken.edge.notify();
        }
        if woken.failed.load(SeqCst) {
            let outer = woken.outer.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(outer) = outer {
                outer.wake();
            }
        }
    }
}

impl Woken {
    fn any(&self) -> bool {
        self.core.load(SeqCst) || self.tasks.load(SeqCst)
    }
}

/// Runs `core` (the core's serving future) and `local`'s tasks on this thread until `core`
/// is done, waiting on the connections' epoll when idle (see the module's notes). Without an
/// epoll (or its notifier), the tasks run beside `core` in `block_on` as any future does.
pub(crate) async fn drive<T>(core: impl Future<Output = T>, local: Local) -> T {
    let driven = Edge::global().and_then(|edge| edge.set_thread_driven(true).map(|()| edge));
    let Ok(edge) = driven.cloned() else {
        let tasks = async move {
            local.run_forever(TASKS_BETWEEN_IO_CHECKS).await;
            unreachable!("runs for ever")
        };
        return core.or(tasks).await;
    };
    let woken = Arc::new(Woken {
        core: AtomicBool::new(true),
        tasks: AtomicBool::new(true),
        waiting: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        edge: edge.clone(),
        outer: Mutex::new(None),
    });
    let flag = |tasks| {
        Waker::from(Arc::new(Flag {
            woken: woken.clone(),
            tasks,
        }))
    };
    let (core_waker, tasks_waker) = (flag(false), flag(true));
    let mut core = pin!(core);
    let done = std::future::poll_fn(|cx| {
        loop {
            if woken.core.swap(false, SeqCst) {
                let mut cx = Context::from_waker(&core_waker);
                if let Poll::Ready(out) = core.as_mut().poll(&mut cx) {
                    return Poll::Ready(out);
                }
            }
            // Ready tasks, a few at a time between looks at the connections (see
            // `TASKS_BETWEEN_IO_CHECKS`); with none ready, the queue keeps the waker.
            if woken.tasks.swap(false, SeqCst) {
                let mut cx = Context::from_waker(&tasks_waker);
                if local.run(&mut cx, TASKS_BETWEEN_IO_CHECKS).is_ready() {
                    woken.tasks.store(true, SeqCst);
                }
            }
            if woken.failed.load(SeqCst) {
                // The core hears of the failure and stops; until then, park in `block_on`.
                *woken.outer.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                match woken.any() {
                    true => continue,
                    false => return Poll::Pending,
                }
            }
            // Busy: a look between tasks. Idle: the wait itself (one `epoll_wait`, which
            // returns at once if events are there).
            let looked = match woken.any() {
                true => edge.poll_now(),
                false => {
                    woken.waiting.store(true, SeqCst);
                    // Not waiting from the moment the wait returns: the wakers of the events
                    // it brings run on this thread, and need not write the notifier.
                    let woke = || woken.waiting.store(false, SeqCst);
                    match woken.any() {
                        true => {
                            woke();
                            Ok(0)
                        }
                        false => edge.wait(&woke),
                    }
                }
            };
            if let Err(error) = looked {
                woken.failed.store(true, SeqCst);
                edge.fail(error);
            }
        }
    })
    .await;
    let _ = edge.set_thread_driven(false);
    done
}
