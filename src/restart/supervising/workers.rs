//! Workers: starting them (a generation, or one slot's replacement), taking them as
//! ready, collecting them when they exit, crash-loop back-off, and the generation limit.

use super::*;

impl Supervising {
    /// The empty slot whose replacement may start first, and when.
    pub(super) fn next_vacancy(&self) -> Option<(usize, Instant)> {
        let now = Instant::now();
        let filled = |slot: usize| {
            self.workers.iter().any(|w| w.slot == slot)
                || self.replacing.iter().any(|r| r.slots.contains(&slot))
        };
        (0..self.count)
            .filter(|&slot| !filled(slot))
            .map(|slot| (slot, self.slots[slot].not_before.unwrap_or(now)))
            .min_by_key(|&(_, at)| at)
    }

    /// Starts workers for `slots` (a restart, with `restart`: the next generation, each with
    /// a relay for the connections and state of the worker it replaces).
    pub(super) fn start_workers(
        &self,
        executor: &LocalExecutor<'static>,
        slots: Vec<usize>,
        restart: bool,
    ) -> io::Result<Starting> {
        let relay = restart && self.config.hand_over_connections;
        let mut tasks = Vec::with_capacity(slots.len());
        for _ in &slots {
            let spawn = handoff::prepare(&self.exec, &self.listeners, Child::Worker { relay })?;
            let emit = self.emit.clone();
            // The first start is not a restart: no generation serves yet to fall back on, so
            // its workers are waited for as long as they take (a start-up that loads a large
            // configuration, say); only later workers are held to `ready_timeout`.
            let timeout = (self.generation > 0).then_some(self.config.ready_timeout);
            // With a relay, the state comes later, from the worker this one replaces, once
            // that one has stopped serving: exact, as for a single process.
            tasks.push(
                executor.spawn(async move { spawn.start_until_ready(&*emit, timeout, None).await }),
            );
        }
        let task = executor.spawn(async move {
            // All start at once. One that fails does not stop the others; those that did
            // come up are retired again, so a failed restart leaves the old generation alone.
            let mut ready = Vec::with_capacity(tasks.len());
            let mut failure = None;
            for task in tasks {
                match task.await {
                    Ok(worker) => ready.push(worker),
                    Err(error) => failure = failure.or(Some(error)),
                }
            }
            match failure {
                None => Ok(ready),
                Some(error) => {
                    for worker in &ready {
                        if let Some(control) = &worker.control {
                            let _ = control.try_send(Message::Retire(None));
                        }
                        // Its `Owned` goes with `ready`: the reaper collects it when it
                        // exits, as any other child.
                    }
                    Err(error)
                }
            }
        });
        Ok(Starting {
            restart,
            slots,
            task,
        })
    }

    /// New workers for `slots` are ready, or one of them failed. `true`: a restart is
    /// complete, and this process should now re-execute itself.
    pub(super) fn started(&mut self, restart: bool, slots: &[usize], outcome: Started) -> bool {
        let ready = match outcome {
            Ok(ready) => ready,
            Err((pid, error)) if restart => {
                self.restart_failed(pid, &error);
                return false;
            }
            Err((pid, error)) => {
                let mut retry_in = Duration::ZERO;
                for &slot in slots {
                    retry_in = retry_in.max(self.quick_death(slot));
                }
                (self.emit)(&Event::SpawnFailed {
                    pid,
                    error: &error,
                    serving: !self.workers.is_empty(),
                    retry_in: Some(retry_in),
                });
                return false;
            }
        };
        if restart || self.generation == 0 {
            self.generation += 1;
        }
        let generation = self.generation;
        let mut relays = Vec::with_capacity(ready.len());
        let mut fresh = Vec::with_capacity(ready.len());
        for (
            &slot,
            Ready {
                child,
                relay,
                control,
            },
        ) in slots.iter().zip(ready)
        {
            let pid = child.id();
            // Collected by pid from here on (see `reap`), once `child` is dropped below.
            let Some(control) = control else { continue };
            (self.emit)(&Event::WorkerReady { pid, generation });
            relays.push((slot, relay));
            fresh.push(Worker {
                pid,
                control,
                generation,
                started: Instant::now(),
                slot,
            });
        }
        if restart {
            // The old worker of each slot hands its connections and state to the new one. A
            // new worker whose slot had none (it died, and was not yet replaced) sees its
            // relay close when our end does, below, and serves at once, with no state.
            for worker in std::mem::take(&mut self.workers) {
                let relay = relays
                    .iter()
                    .find(|(slot, _)| *slot == worker.slot)
                    .and_then(|(_, relay)| relay.as_ref());
                let _ = worker
                    .control
                    .try_send(Message::Retire(relay.map(|r| r.as_fd())));
                self.retiring.push(Retiring {
                    pid: worker.pid,
                    generation: worker.generation,
                    control: Some(worker.control),
                });
            }
            // A new binary: the slots' crash counts start again.
            self.slots = vec![Slot::default(); self.count];
            self.bound_generations();
        }
        // Our ends of the relays close here: each new worker's relay ends when the worker it
        // took over from exits.
        drop(relays);
        self.workers.extend(fresh);
        self.ready();
        if restart {
            (self.emit)(&Event::Restarted {
                generation,
                workers: self.workers.len(),
            });
            self.notify.restart_outcome(std::process::id(), None);
        }
        restart
    }

    pub(super) fn restart_failed(&mut self, pid: Option<u32>, error: &io::Error) {
        (self.emit)(&Event::SpawnFailed {
            pid,
            error,
            serving: !self.workers.is_empty(),
            retry_in: None,
        });
        self.notify.upgrade_failed(&error.to_string());
    }

    /// Tells systemd how many workers serve, once they do.
    pub(super) fn ready(&self) {
        if !self.workers.is_empty() {
            self.notify
                .workers_ready(self.workers.len(), self.generation);
        }
    }

    /// A worker of `slot` died soon after it started, or never came up: the slot's next
    /// replacement waits, twice as long each time in a row (never a spinning core). Returns
    /// the wait.
    pub(super) fn quick_death(&mut self, slot: usize) -> Duration {
        let slot = &mut self.slots[slot];
        slot.quick_deaths += 1;
        let delay = backoff(slot.quick_deaths);
        slot.not_before = Some(Instant::now() + delay);
        delay
    }

    pub(super) fn is_known(&self, pid: u32) -> bool {
        self.workers.iter().any(|w| w.pid == pid) || self.retiring.iter().any(|r| r.pid == pid)
    }

    /// Collects every child that exited and is this process's to collect: workers (by pid;
    /// replaced unless retiring), and orphans reparented to this process. A child that a
    /// `Child` here waits for (a worker still starting) is left to it.
    pub(super) fn reap(&mut self) {
        self.reap_again = false;
        let known: Vec<u32> = self.workers.iter().map(|w| w.pid).collect();
        let retiring = self.retiring.iter().map(|r| r.pid);
        for pid in known.into_iter().chain(retiring.collect::<Vec<_>>()) {
            if let Some(status) = crate::reap::reap_pid(pid) {
                self.exited(pid, status);
            }
        }
        loop {
            match crate::reap::next_orphan(|pid| self.is_known(pid)) {
                Found::Nothing => break,
                Found::Known(pid) => match crate::reap::reap_pid(pid) {
                    Some(status) => self.exited(pid, status),
                    None => break,
                },
                Found::Orphan(pid, status) => (self.emit)(&Event::ChildExited { pid, status }),
                Found::Later => {
                    self.reap_again = true;
                    break;
                }
            }
        }
    }

    /// A worker (serving or retiring) exited.
    pub(super) fn exited(&mut self, pid: u32, status: ExitStatus) {
        if let Some(at) = self.workers.iter().position(|w| w.pid == pid) {
            let worker = self.workers.remove(at);
            let killed = status.signal() == Some(libc::SIGKILL);
            let replaced_in = if status.success() {
                // A clean exit is a drain: it got a shutdown signal, most likely the same
                // one (a Ctrl-C to the group) that is on its way to this process. Replace
                // it only if no shutdown follows shortly.
                let slot = &mut self.slots[worker.slot];
                let at = Instant::now() + CLEAN_EXIT_GRACE;
                slot.not_before = Some(slot.not_before.map_or(at, |n| n.max(at)));
                CLEAN_EXIT_GRACE
            } else if !killed && worker.started.elapsed() < QUICK_DEATH {
                // A crash soon after start: maybe a crash loop.
                self.quick_death(worker.slot)
            } else {
                // It was serving, and something ended it (OOM, SIGKILL, an operator, a
                // crash long after start): replaced at once.
                self.slots[worker.slot] = Slot::default();
                Duration::ZERO
            };
            (self.emit)(&Event::WorkerExited {
                pid,
                status,
                replaced_in: Some(replaced_in),
                state_lost: self.hooks.has_state(),
                stopped: false,
            });
        } else if let Some(at) = self.retiring.iter().position(|r| r.pid == pid) {
            self.retiring.remove(at);
            self.unclean += usize::from(!status.success());
            (self.emit)(&Event::WorkerExited {
                pid,
                status,
                replaced_in: None,
                state_lost: false,
                stopped: self.stopping,
            });
        }
    }

    /// After a restart: with the serving generation and those still draining, more than
    /// `max_generations` are alive; the oldest draining ones are told to stop at once (what
    /// they still do is cut, and their exit says by what), as a single process does.
    pub(super) fn bound_generations(&mut self) {
        let max = self.config.max_generations.max(2);
        let mut draining: Vec<u64> = self
            .retiring
            .iter()
            .filter(|r| r.control.is_some())
            .map(|r| r.generation)
            .collect();
        draining.sort_unstable();
        draining.dedup();
        let ended = &draining[..role::generations_to_end(draining.len(), max)];
        for retiring in self.retiring.iter_mut() {
            if !ended.contains(&retiring.generation) {
                continue;
            }
            // Told once: its channel goes with the message.
            if let Some(control) = retiring.control.take() {
                let _ = control.try_send(Message::StopNow(CutBy::GenerationLimit { max }));
                (self.emit)(&Event::GenerationEnded {
                    pid: retiring.pid,
                    max,
                });
            }
        }
    }

    pub(super) fn signal_retiring(&self, signal: rustix::process::Signal) {
        for pid in self.retiring.iter().map(|r| r.pid) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }
}

/// How long a slot's next replacement waits after `quick_deaths` deaths in a row soon after
/// start: the first is replaced at once, then [`FIRST_BACKOFF`], doubling, at most
/// [`MOST_BACKOFF`].
fn backoff(quick_deaths: u32) -> Duration {
    match quick_deaths {
        0 | 1 => Duration::ZERO,
        n => (FIRST_BACKOFF * 2u32.saturating_pow(n - 2)).min(MOST_BACKOFF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_backs_off_doubling_to_a_bound() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), FIRST_BACKOFF);
        assert_eq!(backoff(3), FIRST_BACKOFF * 2);
        assert_eq!(backoff(4), FIRST_BACKOFF * 4);
        let waits: Vec<Duration> = (1..200).map(backoff).collect();
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(backoff(u32::MAX), MOST_BACKOFF);
    }
}
