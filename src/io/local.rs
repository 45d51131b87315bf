//! [`Local`]: the tasks of a thread that serves with [`crate::Baton::serve_local`], in one
//! queue that the thread runs between its looks at the connections.
//!
//! smol's `LocalExecutor` keeps its runnable tasks in a lock-free queue built for many
//! threads stealing from each other (async-executor's `Executor` beneath), and makes a
//! ticker per task it runs outside `run`: about 230 instructions per task run, measured
//! with callgrind on the echo example, where the whole echoed line costs about 1,000. A
//! thread that runs its own tasks needs one queue under a mutex that nothing contends for
//! but a wake-up from another thread. The tasks are `async-task`'s, as smol's are, and
//! [`Local::spawn`] returns the same [`smol::Task`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use async_task::{Runnable, Task};

/// The tasks that run on the serving thread, beside the core: give it to
/// [`crate::Baton::serve_local`] and spawn a program's connections on it (from
/// [`crate::Program::accepted`] and [`crate::Program::resumed`], which run on that thread).
/// Tasks need not be `Send`; wakers may be woken from any thread. Cloning it clones a handle
/// to the same tasks. Dropping the last handle cancels the tasks that have not finished.
#[derive(Clone)]
pub struct Local(Rc<Owner>);

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queued = self.0.shared.lock().runnable.len();
        f.debug_struct("Local").field("queued", &queued).finish()
    }
}

/// The thread's side: the queue, a buffer its batches run from, and every unfinished task.
struct Owner {
    shared: Arc<Shared>,
    batch: RefCell<Vec<Runnable>>,
    active: Rc<RefCell<Active>>,
}

/// The wakers of the unfinished tasks, so that the end can cancel them all (each woken, then
/// dropped from the queue on this thread).
#[derive(Default)]
struct Active {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// A task's place in [`Active`], left when its future is dropped (finished or cancelled,
/// polled or not).
struct Leaves {
    active: Rc<RefCell<Active>>,
    index: usize,
}

impl Drop for Leaves {
    fn drop(&mut self) {
        let mut active = self.active.borrow_mut();
        active.wakers[self.index] = None;
        active.free.push(self.index);
    }
}

/// What a waker on any thread reaches: the queue and who waits for it.
struct Shared {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    runnable: VecDeque<Runnable>,
    /// Woken at the next task scheduled, once the queue was found empty.
    waker: Option<Waker>,
    /// The last handle was dropped: nothing runs any more.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A task woke (on any thread): queue it, and wake the thread if it waits for one.
    fn schedule(&self, runnable: Runnable) {
        let mut queue = self.lock();
        if queue.closed {
            drop(queue);
            // Only a task that woke itself while the end cancelled the others (it held the
            // last handle): neither run nor dropped here, as a wake may run on any thread and
            // under another's lock (its memory is left, at the end).
            std::mem::forget(runnable);
            return;
        }
        queue.runnable.push_back(runnable);
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Default for Local {
    fn default() -> Local {
        Local::new()
    }
}

impl Local {
    /// No tasks yet, on this thread.
    pub fn new() -> Local {
        Local(Rc::new(Owner {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
            }),
            batch: RefCell::new(Vec::new()),
            active: Rc::default(),
        }))
    }

    /// Spawns `future` as a task on this thread; `detach` the task to let it run on its own,
    /// or drop it to cancel.
    pub fn spawn<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> Task<T> {
        let index = {
            let mut active = self.0.active.borrow_mut();
            match active.free.pop() {
                Some(index) => index,
                None => {
                    active.wakers.push(None);
                    active.wakers.len() - 1
                }
            }
        };
        let leaves = Leaves {
            active: self.0.active.clone(),
            index,
        };
        let future = async move {
            let _leaves = leaves;
            future.await
        };
        let shared = self.0.shared.clone();
        let (runnable, task) = async_task::spawn_local(future, move |r| shared.schedule(r));
        self.0.active.borrow_mut().wakers[index] = Some(runnable.waker());
        runnable.schedule();
        task
    }

    /// Runs the tasks that are ready, at most `max`: `Ready` if it ran `max` (more may be
    /// ready), `Pending` once none is, `cx` woken when one is.
    pub(crate) fn run(&self, cx: &mut Context<'_>, max: usize) -> Poll<()> {
        let mut ran = 0;
        while ran < max {
            let mut batch = std::mem::take(&mut *self.0.batch.borrow_mut());
            {
                let mut queue = self.0.shared.lock();
                if queue.runnable.is_empty() {
                    if !queue
                        .waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        queue.waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                let n = queue.runnable.len().min(max - ran);
                batch.extend(queue.runnable.drain(..n));
            }
            ran += batch.len();
            for runnable in batch.drain(..) {
                runnable.run();
            }
            *self.0.batch.borrow_mut() = batch;
        }
        Poll::Ready(())
    }

    /// Runs the tasks for ever, `max` at a time between yields: for a thread that waits in
    /// `block_on` rather than on the connections' epoll.
    pub(crate) async fn run_forever(&self, max: usize) {
        std::future::poll_fn(|cx| {
            if self.run(cx, max).is_ready() {
                cx.waker().wake_by_ref();
            }
            Poll::<()>::Pending
        })
        .await
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Every unfinished task woken, so that each is in the queue (woken after the close, a
        // task could not be dropped: wakers run anywhere, under others' locks).
        let wakers: Vec<Waker> = {
            let mut active = self.active.borrow_mut();
            active.wakers.iter_mut().filter_map(Option::take).collect()
        };
        for waker in wakers {
            waker.wake();
        }
        let cancelled = {
            let mut queue = self.shared.lock();
            queue.closed = true;
            queue.waker = None;
            std::mem::take(&mut queue.runnable)
        };
        // Dropped outside the lock: a task's future may wake others as it goes.
        drop(cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// Tasks run in the order they became ready, at most `max` per call; with none ready the
    /// caller's waker is kept and woken by the next task scheduled.
    #[test]
    fn runs_ready_tasks_in_order_a_batch_at_a_time() {
        let local = Local::new();
        let order = Rc::new(RefCell::new(Vec::new()));
        for n in 0..5 {
            let order = order.clone();
            local
                .spawn(async move { order.borrow_mut().push(n) })
                .detach();
        }
        let (woken, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(local.run(&mut cx, 3).is_ready());
        assert_eq!(*order.borrow(), [0, 1, 2]);
        assert!(local.run(&mut cx, 3).is_pending());
        assert_eq!(*order.borrow(), [0, 1, 2, 3, 4]);
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        local.spawn(async {}).detach();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }

    /// A task woken from another thread is queued here, runs here, and wakes the thread.
    #[test]
    fn a_wake_from_another_thread_runs_the_task_here() {
        let local = Local::new();
        let (sender, receiver) = smol::channel::bounded::<u32>(1);
        let here = std::thread::current().id();
        let task = local.spawn(async move {
            let got = receiver.recv().await.unwrap();
            (got, std::thread::current().id())
        });
        let (woken, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(local.run(&mut cx, 16).is_pending());
        std::thread::spawn(move || sender.send_blocking(7).unwrap())
            .join()
            .unwrap();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(local.run(&mut cx, 16).is_pending());
        assert_eq!(smol::block_on(task), (7, here));
    }

    /// Dropping the last handle cancels what has not finished: queued tasks and waiting ones
    /// (their futures dropped, on this thread).
    #[test]
    fn dropping_it_cancels_unfinished_tasks() {
        let local = Local::new();
        let dropped = Rc::new(AtomicUsize::new(0));
        struct Guard(Rc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (sender, receiver) = smol::channel::bounded::<()>(1);
        let waiting = Guard(dropped.clone());
        local
            .spawn(async move {
                let _guard = waiting;
                let _ = receiver.recv().await;
            })
            .detach();
        let (_, waker) = waker();
        assert!(local.run(&mut Context::from_waker(&waker), 16).is_pending());
        let queued = Guard(dropped.clone());
        local.spawn(async move { drop(queued) }).detach();
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        drop(local);
        assert_eq!(dropped.load(Ordering::SeqCst), 2, "the waiting task");
        drop(sender);
    }
}
