//! The service shuts down: every worker drains, under the drain timeout.

use super::*;

impl Supervising {
    /// Stops accepting at once (this process's listeners close, and each worker closes its
    /// copies when told), then waits for every worker to drain, bounded by the drain timeout
    /// (then they are killed); a second shutdown signal makes them stop at once.
    pub(super) async fn shutdown(&mut self, signal: Signal) -> Report {
        self.stopping = true;
        self.notify.stopping();
        let unix_paths: Vec<std::path::PathBuf> = self
            .listeners
            .iter()
            .filter_map(Listener::unix_path)
            .map(Into::into)
            .collect();
        self.listeners.clear();
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.control.try_send(Message::Quit(signal));
            self.retiring.push(Retiring {
                pid: worker.pid,
                generation: worker.generation,
                control: Some(worker.control),
            });
        }
        let cut_by = self.wait_for_retiring().await;
        for path in unix_paths {
            let _ = std::fs::remove_file(path);
        }
        let cut = self.unclean;
        let cut_by = cut_by.filter(|_| cut > 0);
        (self.emit)(&Event::Exiting {
            cut,
            dropped: 0,
            upgraded: 0,
            lost: 0,
            cut_by,
        });
        self.notify.exited(true);
        Report {
            stop: Stop::Shutdown { signal },
            cut,
            dropped: 0,
            upgraded: 0,
            lost: 0,
            cut_by,
        }
    }

    /// Waits for every retiring worker to exit: a second shutdown signal tells them to stop
    /// at once; past the drain timeout (and a grace) they are killed. Returns what cut their
    /// drains, if anything did.
    async fn wait_for_retiring(&mut self) -> Option<CutBy> {
        let deadline = Instant::now() + self.config.drain_timeout + KILL_GRACE;
        let mut killed = false;
        let mut cut_by = None;
        self.reap();
        while !self.retiring.is_empty() {
            let next = async { Some(self.signals.next().await) };
            let late = async {
                if killed {
                    std::future::pending::<()>().await;
                }
                Timer::at(deadline).await;
                None
            };
            let draining = Phase::Draining {
                first_is_expected: false,
            };
            match next.or(late).await {
                Some(Ok((signal, command))) => {
                    match role::action(Role::Supervising, draining, command) {
                        Action::Reap => {}
                        Action::Ignore(reason) => {
                            (self.emit)(&Event::Signal { signal });
                            (self.emit)(&Event::Ignored { signal, reason });
                        }
                        _ => {
                            (self.emit)(&Event::Signal { signal });
                            // Draining workers stop at once on a second shutdown signal.
                            cut_by = Some(CutBy::Signal);
                            for control in self.retiring.iter().filter_map(|r| r.control.as_ref()) {
                                let _ = control.try_send(Message::StopNow(CutBy::Signal));
                            }
                        }
                    }
                }
                Some(Err(_)) => {}
                None => {
                    killed = true;
                    cut_by = cut_by.or(Some(CutBy::DrainTimeout));
                    self.signal_retiring(rustix::process::Signal::KILL);
                }
            }
            self.reap();
        }
        cut_by
    }
}
