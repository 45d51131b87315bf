//! `Draining`: no more accepting; the program's work ends, moves or is cut under the drain
//! timer.

use super::*;

impl Process {
    /// Stops accepting and waits, under the drain timer, for every connection to end; serves
    /// again if the successor exits meanwhile.
    ///
    /// After a restart this process keeps its copy of the listeners, unused, until it exits:
    /// should the successor die during the drain, it serves again. The sockets, and every
    /// connection waiting in their accept queues, live on in the successor either way.
    ///
    /// A shutdown closes this process's listeners at once, after taking what waits in their
    /// queues (served like any connection): once the last copy of a socket is closed, new
    /// connections are refused, which a client or load balancer sees at once, instead of
    /// being accepted by the kernel and left unanswered. (Under socket activation systemd
    /// keeps its own copy, and the socket stays its business.) A worker closes its copies at any drain: it never serves again, and
    /// its supervising process holds the sockets.
    pub(super) async fn draining(&mut self, draining: Draining) -> Phase {
        let Draining {
            stop,
            mut successor,
            mut outbound,
            from_supervisor,
        } = draining;
        let shutdown = matches!(stop, Stop::Shutdown { .. });
        self.reap();
        // A worker's sockets belong to its supervising process, which ends the service.
        let last = shutdown && self.spawned.is_empty() && self.role != Role::Worker;
        self.stop_accepting(shutdown, last);
        if let Some(relay) = outbound.take() {
            self.drain
                .set_relay(std::sync::Arc::new(relay), self.config.max_held_bytes);
        }
        forward_inbound(&self.drain, &mut self.inbound.relays).await;
        self.inbound.prune_exited();
        if matches!(stop, Stop::Restart { .. }) {
            // Checked now, once the successor serves: a generation that had nothing to drain
            // has had the time to exit, and is not counted.
            self.bound_generations();
        }
        if let Some(relay) = self.drain.relay() {
            // The successor bounds the generations alive: tell it which are still draining.
            let mut pids = self.inbound.older.clone();
            pids.push(std::process::id());
            let _ = relay.send(Message::Generations(&pids)).await;
        }
        // Counted before the drain starts: once it has, connections move and end at once.
        let (connections, requests) = self.open();
        self.drain.start(shutdown);
        (self.emit)(&Event::Draining {
            connections,
            requests,
        });
        let deadline = Timer::after(self.config.drain_timeout);
        self.hooks.draining().await;
        let ending = self
            .drain_ending(&mut successor, deadline, from_supervisor)
            .await;
        let (cut, dropped, upgraded) = match ending {
            Ending::Drained => (0, 0, 0),
            Ending::Cut(_) => self.cut_short().await,
            Ending::SuccessorExited(pid, status) => {
                // The successor is gone and this process still holds the sockets: serve again.
                (self.emit)(&Event::SuccessorExited { pid, status });
                self.supervisor.resumed(pid, status);
                self.datagrams_given = false;
                let fresh = crate::drain::next_round();
                let given_up = std::mem::replace(&mut self.drain, fresh);
                self.earlier.push(given_up);
                return Phase::Serving;
            }
        };
        // Stop listening here (the sockets live on in the successor, if any).
        self.listeners = Listeners::new(Vec::new());
        let all = self.earlier.iter().chain(std::iter::once(&self.drain));
        let lost = all.map(Drain::lost_count).sum();
        let cut_by = match ending {
            Ending::Cut(by) => Some(by),
            _ => None,
        };
        (self.emit)(&Event::Exiting {
            cut,
            dropped,
            upgraded,
            lost,
            cut_by,
        });
        self.supervisor.exited(last);
        Phase::Done(Report {
            stop,
            cut,
            dropped,
            upgraded,
            lost,
            cut_by,
        })
    }

    /// Stops accepting: accepts by the successor should not wake this process. A shutdown
    /// serves what waits in the queues and closes this process's copies of the sockets (a
    /// worker's go at any drain); the `last` process of the service also removes its Unix
    /// sockets' files.
    fn stop_accepting(&mut self, shutdown: bool, last: bool) {
        self.listeners.unwatch();
        if last {
            self.supervisor.stopping();
            // A Unix socket's file goes only when serving ends for good: never in a restart
            // (the successor serves on it), nor while a SIGUSR2 child still does.
            for path in self.listeners.iter().filter_map(Listener::unix_path) {
                let _ = std::fs::remove_file(path);
            }
        }
        if shutdown {
            // The queues' connections are served, not reset by the close, which follows at
            // once (a worker's copy may be the last): only a handshake completing in between
            // is reset; what comes after the close is refused.
            let queued = self.listeners.take_queued(QUEUED_AT_SHUTDOWN);
            let named: Vec<(Address, bool)> = self
                .listeners
                .iter()
                .map(|l| (l.local.clone(), l.tls))
                .collect();
            self.listeners = Listeners::new(Vec::new());
            for (index, accepted) in queued {
                let (local, tls) = &named[index];
                self.serve_accepted_from(local.clone(), *tls, index, accepted);
            }
        }
        if self.role == Role::Worker {
            self.listeners = Listeners::new(Vec::new());
        }
    }

    /// The drain was cut: the connections still open are told so (503, or a reset) for a
    /// moment; returns the requests cut, the connections dropped, and how many of those
    /// were upgraded.
    async fn cut_short(&self) -> (usize, usize, usize) {
        let (connections, requests) = self.open();
        let all = self.earlier.iter().chain(std::iter::once(&self.drain));
        let upgraded = all.clone().map(|d| d.upgraded_open()).sum();
        for drain in all.clone() {
            drain.give_up();
        }
        let said = async {
            for drain in all {
                // Upgraded connections are not cut this way: they close at exit.
                drain.below(drain.upgraded_open() + 1).await;
            }
        };
        said.or(async {
            Timer::after(CUT_GRACE).await;
        })
        .await;
        (requests, connections, upgraded)
    }

    /// Connections and requests open in this drain and the ones given up before it.
    pub(super) fn open(&self) -> (usize, usize) {
        let all = self.earlier.iter().chain(std::iter::once(&self.drain));
        all.fold((0, 0), |(c, r), d| (c + d.connections(), r + d.requests()))
    }

    /// How the drain ends: every connection done, the timer, a second shutdown signal, or the
    /// successor exiting. `from_supervisor`: the supervising process started this drain.
    pub(super) async fn drain_ending(
        &mut self,
        successor: &mut Option<Owned>,
        deadline: Timer,
        from_supervisor: bool,
    ) -> Ending {
        let state_wait = &self.config.state_wait;
        let max_state = &self.config.max_state_bytes;
        let Process {
            program,
            hooks,
            signals,
            control,
            emit,
            inbound,
            relay_buffer,
            drain,
            earlier,
            spawned,
            role: this_role,
            ..
        } = self;
        // A predecessor may still be handing connections over (a restart came before it was
        // gone). With a successor to forward its relay to, that is the successor's business
        // now (see `forward_inbound`); else keep taking them until it closes the relay, or
        // they would be lost in the relay's buffer when this process exits.
        let relaying = async {
            while !inbound.relays.is_empty() {
                let (index, message) = receive_any(&inbound.relays, relay_buffer).await;
                relayed(&**program, drain, emit, inbound, index, message);
                forward_inbound(drain, &mut inbound.relays).await;
            }
        };
        // The state, once what this process was answering is done: the successor serves
        // only once it has it, so it starts from the state after this process's last request.
        let state_sent = std::cell::Cell::new(false);
        let hand_state = async {
            if let Some(relay) = drain.relay() {
                if hooks.has_state() {
                    let wait = Timer::after(*state_wait);
                    drain
                        .requests_done()
                        .or(async {
                            wait.await;
                        })
                        .await;
                }
                // (Bounded by the relay: a successor that does not read it starts without.)
                let state = outgoing_state(hooks, *max_state, &**emit);
                send_state(&relay, &state, true, &**emit).await;
            }
            state_sent.set(true);
        };
        let finished = async {
            hand_state.await;
            relaying.await;
            for drain in earlier.iter().chain(std::iter::once(&*drain)) {
                drain.finished().await;
            }
            Ending::Drained
        };
        let timeout = async {
            deadline.await;
            Ending::Cut(CutBy::DrainTimeout)
        };
        let signalled = drain_signals(
            *this_role,
            from_supervisor,
            signals,
            emit,
            spawned,
            successor,
        );
        let stop_now = stop_order(control.as_ref());
        let ending = finished.or(signalled).or(stop_now).or(timeout).await;
        if !state_sent.get() {
            // Cut before the state went: the successor still gets it (best effort).
            if let Some(relay) = self.drain.relay() {
                let state = self.state();
                send_state(&relay, &state, false, &*self.emit).await;
            }
        }
        ending
    }
}

/// Signals while draining, until one ends the drain: a shutdown signal cuts it (a worker
/// retired by its supervising process takes the first as the copy a Ctrl-C sends the whole
/// group, when `from_supervisor`); SIGCHLD collects children, and a successor that failed
/// (killed, crashed) means serving again; anything else is ignored, saying so.
async fn drain_signals(
    role: Role,
    from_supervisor: bool,
    signals: &mut Signals,
    emit: &Rc<dyn Fn(&Event<'_>)>,
    spawned: &mut Vec<Owned>,
    successor: &mut Option<Owned>,
) -> Ending {
    let mut first_is_expected = from_supervisor;
    loop {
        let Ok((signal, command)) = signals.next().await else {
            return std::future::pending().await;
        };
        let phase = role::Phase::Draining { first_is_expected };
        match role::action(role, phase, command) {
            Action::Reap => {
                reap(spawned, &**emit);
                if let Some(child) = successor.as_mut() {
                    match child.try_wait() {
                        Ok(Some(status)) if !status.success() => {
                            return Ending::SuccessorExited(child.id(), status);
                        }
                        // It drained and exited as it should (a later restart, or a shutdown):
                        // nothing to take back.
                        Ok(Some(_)) => *successor = None,
                        _ => {}
                    }
                }
            }
            Action::Ignore(reason) => {
                emit(&Event::Signal { signal });
                first_is_expected &= command != Command::Shutdown;
                emit(&Event::Ignored { signal, reason });
            }
            _ => {
                emit(&Event::Signal { signal });
                return Ending::Cut(CutBy::Signal);
            }
        }
    }
}

/// (A worker) the supervising process's "stop at once", and why; never if it has no channel
/// or is gone (the drain goes on).
async fn stop_order(control: Option<&Relay>) -> Ending {
    let mut buffer = Vec::new();
    while let Some(channel) = control {
        match channel.receive(&mut buffer).await {
            Ok(Some(Received::StopNow(by))) => return Ending::Cut(by),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    std::future::pending().await
}

/// The most connections taken from each listener's queue at a shutdown (a listen backlog's
/// worth): closing the socket would reset them.
pub(super) const QUEUED_AT_SHUTDOWN: usize = 4096;

/// How a drain ended.
pub(super) enum Ending {
    Drained,
    /// The drain timeout, a second shutdown signal, or the generation limit.
    Cut(CutBy),
    /// The successor this process handed over to exited during the drain.
    SuccessorExited(u32, ExitStatus),
}
