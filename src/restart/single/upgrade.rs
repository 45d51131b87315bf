//! Starting a successor (SIGHUP, SIGUSR2), bounding the generations alive, and what its
//! readiness or failure leads to.

use super::*;

impl Process {
    /// At a restart: with this process, its successor and the older generations still
    /// draining, more than `max_generations` are alive; the oldest draining ones are told to
    /// stop at once (a second SIGTERM: what they still do is cut). Expects `inbound.older`
    /// pruned of the generations that have exited.
    pub(super) fn bound_generations(&mut self) {
        let max = self.config.max_generations.max(2);
        let older = &self.inbound.older;
        // This process drains too, but is not the one to end.
        let excess = role::generations_to_end(older.len() + 1, max).min(older.len());
        for &pid in &older[..excess] {
            if let Some(target) = rustix::process::Pid::from_raw(pid as i32) {
                // Draining already: a shutdown signal ends its drain at once.
                let _ = rustix::process::kill_process(target, rustix::process::Signal::TERM);
                (self.emit)(&Event::GenerationEnded { pid, max });
            }
        }
        self.inbound.older.drain(..excess);
    }

    /// Starts a successor (SIGHUP: `restart`; SIGUSR2: beside this process); `None` if it
    /// could not even be prepared (reported).
    pub(super) fn upgrade(&self, restart: bool) -> Option<Upgrade> {
        if restart {
            self.supervisor.reloading();
        }
        let room = match restart && self.config.hand_over_connections {
            true => handoff::check_fd_room(None),
            false => Ok(()),
        };
        match room.and_then(|()| self.upgrade_task()) {
            Ok(task) => Some(Upgrade {
                restart,
                task: Box::pin(task),
            }),
            Err(error) => {
                if restart {
                    self.supervisor.upgrade_failed(&error.to_string());
                }
                (self.emit)(&Event::SpawnFailed {
                    pid: None,
                    error: &error,
                    serving: true,
                    retry_in: None,
                });
                None
            }
        }
    }

    /// Starts a successor and waits until it is ready: the part of an upgrade that runs
    /// beside the serving loop.
    pub(super) fn upgrade_task(&self) -> io::Result<impl Future<Output = Upgraded> + 'static> {
        // A successor that cannot report readiness (a Go server) cannot take connections over
        // the relay either: they would be lost in it.
        let hand_over =
            self.config.hand_over_connections && self.config.successor_ready_after.is_none();
        let role = handoff::Child::Successor { relay: hand_over };
        let spawn = handoff::prepare(&self.exec, self.listeners.as_slice(), role)?;
        let emit = self.emit.clone();
        let hooks = self.hooks.clone();
        let timeout = Some(self.config.ready_timeout);
        let settle = self.config.successor_ready_after;
        Ok(async move {
            hooks.spawning().await;
            // The state goes later, once this process has stopped serving (exact).
            spawn.start_until_ready(&*emit, timeout, settle).await
        })
    }

    /// The successor is ready or failed: drain (a restart), or serve on.
    pub(super) async fn upgraded(&mut self, restart: bool, outcome: Upgraded) -> Phase {
        match outcome {
            Ok(handoff::Ready { child, relay, .. }) => {
                let pid = child.id();
                (self.emit)(&Event::Ready { pid });
                if restart {
                    self.supervisor.successor_ready(pid);
                    self.supervisor.restart_outcome(pid, None);
                }
                self.hooks.ready(pid).await;
                if !restart {
                    // A SIGUSR2 successor gets the state as it stands (both serve on), and no
                    // connections: its relay closes here. It has the PID file now (and
                    // MAINPID); this process is `<pid file>.oldbin`.
                    if let Some(relay) = &relay {
                        let state = self.state();
                        send_state(relay, &state, false, &*self.emit).await;
                    }
                    self.supervisor.successor_ready(pid);
                    self.supervisor.old_binary();
                    self.spawned.push(child);
                    return Phase::Serving;
                }
                Phase::Draining(Draining {
                    stop: Stop::Restart { successor: pid },
                    successor: Some(child),
                    outbound: relay,
                    from_supervisor: false,
                })
            }
            Err((pid, error)) => {
                if restart {
                    self.supervisor.upgrade_failed(&error.to_string());
                }
                (self.emit)(&Event::SpawnFailed {
                    pid,
                    error: &error,
                    serving: true,
                    retry_in: None,
                });
                Phase::Serving
            }
        }
    }

    /// The application's state, as a message for the successor.
    pub(super) fn state(&self) -> Outgoing {
        outgoing_state(&self.hooks, self.config.max_state_bytes, &*self.emit)
    }

    pub(super) fn reap(&mut self) {
        let had: Vec<u32> = self.spawned.iter().map(|c| c.id()).collect();
        reap(&mut self.spawned, &*self.emit);
        // Every SIGUSR2 successor is gone: rolled back (this process is the service again), or
        // restarted itself into another process that has the PID file now.
        if self.drain.is_draining() || !self.spawned.is_empty() {
            return;
        }
        for pid in had {
            if let Some(serving) = self.supervisor.successor_gone(pid) {
                (self.emit)(&Event::SuccessorMovedOn { gone: pid, serving });
            }
        }
    }
}
