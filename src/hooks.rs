//! The user's code at the turning points of a restart: before a successor is spawned, when it
//! is ready, when draining starts, and when serving is over.
//!
//! Hooks are async (`Fn(..) -> impl Future<Output = ()>`) and run on the server's thread; for
//! synchronous work, do it and return a ready future: `|| { flush(); async {} }`. A hook is
//! awaited where it stands: `on_spawn` before the fork (while connections go on being served),
//! `on_ready` and `on_drain` in the server loop, `on_exit` before [`crate::Baton::serve`]
//! returns. Keep them short; the drain timer is running during `on_drain`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::report::Report;

type Hook<A> = Rc<dyn Fn(A) -> Pin<Box<dyn Future<Output = ()>>>>;

fn boxed<A, F, Fut>(hook: F) -> Hook<A>
where
    F: Fn(A) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    Rc::new(move |arg| Box::pin(hook(arg)))
}

#[derive(Clone, Default)]
pub(crate) struct Hooks {
    spawn: Option<Hook<()>>,
    ready: Option<Hook<u32>>,
    drain: Option<Hook<()>>,
    exit: Option<Hook<Report>>,
    /// The application's state for a successor (old side).
    give: Option<Rc<dyn Fn() -> serde_json::Value>>,
    /// The previous process's state, before this one serves (new side).
    take: Option<Rc<dyn Fn(serde_json::Value)>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("spawn", &self.spawn.is_some())
            .field("ready", &self.ready.is_some())
            .field("drain", &self.drain.is_some())
            .field("exit", &self.exit.is_some())
            .field("give", &self.give.is_some())
            .field("take", &self.take.is_some())
            .finish()
    }
}

impl Hooks {
    pub(crate) fn set_spawn<F, Fut>(&mut self, hook: F)
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.spawn = Some(boxed(move |()| hook()));
    }

    pub(crate) fn set_ready<F, Fut>(&mut self, hook: F)
    where
        F: Fn(u32) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.ready = Some(boxed(hook));
    }

    pub(crate) fn set_drain<F, Fut>(&mut self, hook: F)
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.drain = Some(boxed(move |()| hook()));
    }

    pub(crate) fn set_exit<F, Fut>(&mut self, hook: F)
    where
        F: Fn(Report) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.exit = Some(boxed(hook));
    }

    pub(crate) fn set_give(&mut self, hook: impl Fn() -> serde_json::Value + 'static) {
        self.give = Some(Rc::new(hook));
    }

    pub(crate) fn set_take(&mut self, hook: impl Fn(serde_json::Value) + 'static) {
        self.take = Some(Rc::new(hook));
    }

    /// The application hands state to its successor.
    pub(crate) fn has_state(&self) -> bool {
        self.give.is_some()
    }

    /// The state to hand to a successor, as JSON text (`None`: the application has none).
    pub(crate) fn state(&self) -> Option<Vec<u8>> {
        self.give
            .as_ref()
            .map(|give| crate::json::text(&give()).into_bytes())
    }

    /// Passes on the previous process's state (if the application takes it). A state that
    /// is not JSON is an error that says so.
    pub(crate) fn inherit(&self, state: &[u8]) -> Result<(), String> {
        if let Some(take) = &self.take {
            let value = crate::json::parse(state)
                .map_err(|e| format!("the state is not valid JSON: {e}"))?;
            take(value);
        }
        Ok(())
    }

    pub(crate) async fn spawning(&self) {
        if let Some(hook) = &self.spawn {
            hook(()).await;
        }
    }

    pub(crate) async fn ready(&self, pid: u32) {
        if let Some(hook) = &self.ready {
            hook(pid).await;
        }
    }

    pub(crate) async fn draining(&self) {
        if let Some(hook) = &self.drain {
            hook(()).await;
        }
    }

    pub(crate) async fn exiting(&self, report: &Report) {
        if let Some(hook) = &self.exit {
            hook(report.clone()).await;
        }
    }
}
