//! `Serving` and `Restarting`: the select loop that accepts, takes relayed connections and
//! signals, and (while upgrading) waits for the successor.

use super::*;

/// What woke the serving loop.
enum Wake {
    /// A message on inbound relay `.0`, or the end of that relay.
    Relayed(usize, io::Result<Option<Received>>),
    Accepted(Result<(usize, Accepted), AcceptError>),
    Signal(io::Result<(Signal, Command)>),
    Upgraded(Upgraded),
    /// A message from the supervising process, or the end of its channel.
    Control(io::Result<Option<Received>>),
}

impl Process {
    /// `Serving` (no restart under way) and `Restarting`: accept and serve until something
    /// changes the phase.
    pub(super) async fn serving(&mut self, mut upgrade: Option<Upgrade>) -> io::Result<Phase> {
        if !self.datagrams_given {
            self.give_datagrams();
        }
        loop {
            match self.next_wake(upgrade.as_mut()).await {
                Wake::Relayed(index, message) => {
                    let Process {
                        program,
                        inbound,
                        drain,
                        emit,
                        ..
                    } = self;
                    relayed(&**program, drain, emit, inbound, index, message);
                }
                Wake::Accepted(Ok((index, connection))) => self.serve_accepted(index, connection),
                Wake::Accepted(Err(failure)) => {
                    if failure.pause {
                        self.accept_failed(&failure.error);
                    }
                }
                Wake::Signal(signal) => {
                    let (signal, command) = signal?;
                    if let Some(next) = self.signalled(signal, command, upgrade.is_some()) {
                        return Ok(next);
                    }
                }
                Wake::Upgraded(outcome) => {
                    let restart = upgrade.take().is_some_and(|upgrade| upgrade.restart);
                    return Ok(self.upgraded(restart, outcome).await);
                }
                // Retired by the supervising process (with the new worker to hand connections
                // to), the service shuts down, or the supervising process is gone: drain and
                // exit either way.
                Wake::Control(message) => return Ok(self.controlled(message)),
            }
        }
    }

    /// What `signal` changes while serving (`upgrading`: a successor starts), as the
    /// role's table says: the next phase, if any.
    fn signalled(&mut self, signal: Signal, command: Command, upgrading: bool) -> Option<Phase> {
        if command != Command::Reap {
            (self.emit)(&Event::Signal { signal });
        }
        let phase = match () {
            () if upgrading => role::Phase::Restarting,
            () if !self.spawned.is_empty() => role::Phase::BesideSuccessor,
            () => role::Phase::Serving,
        };
        match role::action(self.role, phase, command) {
            Action::Reap => self.reap(),
            Action::Ignore(reason) => {
                // `reload` waits for an outcome: this is it (an upgrade under way writes its
                // own).
                if command == Command::Restart && phase != role::Phase::Restarting {
                    self.supervisor.upgrade_failed(reason);
                }
                (self.emit)(&Event::Ignored { signal, reason });
            }
            action @ (Action::Restart | Action::Spawn) => {
                return self
                    .upgrade(action == Action::Restart)
                    .map(Phase::Restarting);
            }
            // A successor still starting is killed with its task.
            Action::Shutdown | Action::StopNow => {
                return Some(Phase::Draining(Draining {
                    stop: Stop::Shutdown { signal },
                    successor: None,
                    outbound: None,
                    from_supervisor: false,
                }));
            }
        }
        None
    }

    /// (A worker) its supervising process retired it (with the new worker to hand
    /// connections to), the service shuts down, or the supervising process is gone: drain
    /// and exit either way.
    fn controlled(&mut self, message: io::Result<Option<Received>>) -> Phase {
        let (stop, outbound) = match message {
            Ok(Some(Received::Retire(relay))) => {
                (Stop::Retired, relay.and_then(|r| Relay::new(r).ok()))
            }
            Ok(Some(Received::Quit(name))) => {
                let signal = Signal::from_name(&name).unwrap_or(Signal::Term);
                (Stop::Shutdown { signal }, None)
            }
            // A retire whose relay could not be taken (at the fd limit despite the reserve):
            // retire all the same, and say that nothing moves.
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                (self.emit)(&Event::HandOverImpossible {
                    why: &error.to_string(),
                });
                (Stop::Retired, None)
            }
            // The channel stays while the supervising process is there: a second shutdown
            // comes on it as "stop at once".
            _ => {
                self.control = None;
                (Stop::Retired, None)
            }
        };
        Phase::Draining(Draining {
            stop,
            successor: None,
            outbound,
            from_supervisor: self.control.is_some(),
        })
    }

    /// Waits for the next thing the serving loop acts on.
    async fn next_wake(&mut self, upgrade: Option<&mut Upgrade>) -> Wake {
        let Process {
            listeners,
            signals,
            inbound,
            control,
            relay_buffer,
            edge,
            drain,
            config,
            ..
        } = self;
        let accept = async {
            // At the limit, leave new connections in the kernel's queue until one ends.
            drain.below(config.max_connections.max(1)).await;
            let accepted = listeners.accept(edge).await;
            Wake::Accepted(accepted)
        };
        let signal = async { Wake::Signal(signals.next().await) };
        let relayed = async {
            let (index, message) = receive_any(&inbound.relays, relay_buffer).await;
            Wake::Relayed(index, message)
        };
        let upgraded = async {
            match upgrade {
                Some(upgrade) => Wake::Upgraded((&mut upgrade.task).await),
                None => std::future::pending().await,
            }
        };
        let controlled = async {
            let mut buffer = Vec::new();
            match control.as_ref() {
                Some(control) => Wake::Control(control.receive(&mut buffer).await),
                None => std::future::pending().await,
            }
        };
        signal
            .or(controlled)
            .or(upgraded)
            .or(relayed)
            .or(accept)
            .await
    }

    /// Gives the program each UDP listener (a copy of its socket), counted for the drain.
    pub(super) fn give_datagrams(&mut self) {
        self.datagrams_given = true;
        for (index, listener) in self.listeners.as_slice().iter().enumerate() {
            let Address::Udp(local) = listener.local else {
                continue;
            };
            let socket = listener.duplicate();
            let datagrams = socket
                .and_then(|socket| Datagrams::register(socket, local, index, self.drain.work()));
            match datagrams {
                Ok(datagrams) => self.program.datagrams(datagrams, self.drain.clone()),
                Err(error) => self.accept_failed(&error),
            }
        }
    }

    /// Reports a failed accept, at most once per [`ACCEPT_REPORT_EVERY`], with how many
    /// went unreported since: a process at its fd limit fails ten times a second.
    pub(super) fn accept_failed(&self, error: &io::Error) {
        let (last, suppressed) = self.accept_reports.get();
        let now = std::time::Instant::now();
        if last.is_some_and(|last| now.duration_since(last) < ACCEPT_REPORT_EVERY) {
            self.accept_reports.set((last, suppressed + 1));
            return;
        }
        self.accept_reports.set((Some(now), 0));
        (self.emit)(&Event::AcceptFailed { error, suppressed });
    }

    pub(super) fn serve_accepted(&self, index: usize, accepted: Accepted) {
        let listener = &self.listeners.as_slice()[index];
        self.serve_accepted_from(listener.local.clone(), listener.tls, index, accepted);
    }

    /// Gives the program a connection accepted on listener `index` (at `local`).
    pub(super) fn serve_accepted_from(
        &self,
        local: Address,
        tls: bool,
        index: usize,
        (socket, peer): Accepted,
    ) {
        let stream = match Stream::with_addresses(socket, peer, local) {
            // Counted from the accept on, so the connection limit holds exactly.
            Ok(stream) => stream.counted(self.drain.work()),
            Err(error) => {
                // (The epoll refused it: out of memory, or max_user_watches.) Closed now.
                self.accept_failed(&error);
                return;
            }
        };
        self.program.accepted(Connection {
            stream,
            listener: index,
            tls,
            drain: self.drain.clone(),
        });
    }
}
