//! The one loop every restart machine runs: a process that serves and replaces itself (or a
//! worker), and a supervising process, go through the same phases, each machine's in files
//! of its own:
//!
//! ```text
//! Serving ──restart──> Restarting ──done, or failed──> Serving
//!    │                     │ ready (a single process)
//!    └──shutdown──> Draining <┘ ──the successor died (a single process)──> Serving
//!                      │
//!                      └──> Done(report) ──> ending (the application's on_exit)
//! ```
//!
//! What a signal does in each phase is the role's table's ([`super::role`]); what each phase
//! does is the machine's ([`Machine`]); the order of the phases is this loop's alone.

use std::io;

use crate::report::Report;

/// Where a machine is: what [`drive`] runs next.
pub(crate) enum Step<R, D> {
    /// Serving, no restart under way.
    Serving,
    /// Serving while a restart (`R`: the successor or the workers starting) comes up.
    Restarting(R),
    /// Draining (`D`: why, and after a restart, to whom).
    Draining(D),
    /// Drained: what the drain cut short.
    Done(Report),
}

/// A restart machine: what it does in each phase.
pub(crate) trait Machine {
    /// A restart under way.
    type Restart;
    /// A drain under way.
    type Drain;

    /// Serves (`restart`: while that restart comes up) until the phase changes.
    async fn serving(
        &mut self,
        restart: Option<Self::Restart>,
    ) -> io::Result<Step<Self::Restart, Self::Drain>>;

    /// Drains, until done (or, for a single process whose successor died, serving again).
    async fn draining(&mut self, drain: Self::Drain) -> Step<Self::Restart, Self::Drain>;

    /// The end, once: the application's last word on the report.
    async fn ending(&mut self, report: &Report);
}

/// Runs `machine` from `first` until it is done; its report.
pub(crate) async fn drive<M: Machine>(
    machine: &mut M,
    first: Step<M::Restart, M::Drain>,
) -> io::Result<Report> {
    let mut step = first;
    let report = loop {
        step = match step {
            Step::Serving => machine.serving(None).await?,
            Step::Restarting(restart) => machine.serving(Some(restart)).await?,
            Step::Draining(drain) => machine.draining(drain).await,
            Step::Done(report) => break report,
        };
    };
    machine.ending(&report).await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine whose phases are a script: each call takes the next step and records what
    /// was called.
    struct Scripted {
        script: Vec<Step<&'static str, &'static str>>,
        calls: Vec<String>,
    }

    impl Machine for Scripted {
        type Restart = &'static str;
        type Drain = &'static str;

        async fn serving(
            &mut self,
            restart: Option<&'static str>,
        ) -> io::Result<Step<&'static str, &'static str>> {
            self.calls.push(format!("serving {restart:?}"));
            match self.script.is_empty() {
                true => Err(io::Error::other("the script ran out")),
                false => Ok(self.script.remove(0)),
            }
        }

        async fn draining(&mut self, drain: &'static str) -> Step<&'static str, &'static str> {
            self.calls.push(format!("draining {drain}"));
            self.script.remove(0)
        }

        async fn ending(&mut self, report: &Report) {
            self.calls.push(format!("ending {}", report.is_clean()));
        }
    }

    /// A restart, a drain given up when the successor died, serving again, then a shutdown:
    /// each phase runs in turn with what the one before handed it, and the end runs once.
    #[test]
    fn phases_follow_each_other_and_the_end_runs_once() {
        let mut machine = Scripted {
            script: vec![
                Step::Restarting("successor 1"),
                Step::Draining("after restart 1"),
                Step::Serving,
                Step::Draining("shutdown"),
                Step::Done(Report {
                    stop: crate::report::Stop::Retired,
                    cut: 0,
                    dropped: 0,
                    upgraded: 0,
                    lost: 0,
                    cut_by: None,
                }),
            ],
            calls: Vec::new(),
        };
        let report = smol::block_on(drive(&mut machine, Step::Serving)).unwrap();
        assert!(report.is_clean());
        assert_eq!(
            machine.calls,
            [
                "serving None",
                "serving Some(\"successor 1\")",
                "draining after restart 1",
                "serving None",
                "draining shutdown",
                "ending true",
            ]
        );
    }

    /// A failing phase stops the loop with its error, and the end does not run.
    #[test]
    fn an_error_stops_the_loop_without_the_end() {
        let mut machine = Scripted {
            script: vec![Step::Restarting("successor")],
            calls: Vec::new(),
        };
        let result = smol::block_on(drive(&mut machine, Step::Serving));
        assert!(result.is_err());
        assert_eq!(
            machine.calls,
            ["serving None", "serving Some(\"successor\")"]
        );
    }
}
