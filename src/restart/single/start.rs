//! Start-up: the program's checks, the pid file, the predecessor's state, readiness.

use super::*;

/// Everything before the first accept: the program's checks, the pid file, the predecessor's
/// state, and telling the parent (if any) that this process serves.
pub(super) async fn start(
    setup: Setup,
    program: Rc<dyn Program>,
    edge: Arc<Edge>,
) -> io::Result<Process> {
    // The program's checks (certificates, say) pass before anything reports ready: a
    // successor whose configuration is broken fails here, and its parent serves on.
    setup.check_before_ready()?;
    let Setup {
        config,
        listeners,
        ready,
        relay,
        control,
        supervisor_state: _,
        endless_parent,
        environment_kept,
        signals,
        exec,
        on_event: emit,
        hooks,
        before_ready: _,
    } = setup;
    // A worker must take its retire message's relay even at its fd limit.
    let control = control
        .map(Relay::new)
        .transpose()?
        .map(Relay::with_reserve);
    let is_worker = control.is_some();
    // The PID file names this process before its parent hears that it is ready. A worker's
    // supervising process keeps the PID file and speaks to systemd.
    let pid_file = config.pid_file.clone().filter(|_| control.is_none());
    let supervisor = Supervisor::new(pid_file);
    supervisor.serving(ready.is_some())?;
    announce(&listeners, environment_kept, &*emit);
    // Unannounced, the parent would kill this process at its upgrade timeout anyway.
    ready
        .map(handoff::announce_ready)
        .transpose()
        .map_err(|e| {
            let what = "cannot tell the parent process this one is ready";
            crate::error::context(e.kind(), what.into(), e)
        })?;
    let mut relay_buffer = Vec::new();
    let relay = relay.map(Relay::new).transpose()?;
    let (mut inbound, waiting) =
        take_state(relay, &config, &hooks, &*emit, &mut relay_buffer).await;
    if let Some(parent) = endless_parent {
        tell_endless_parent(parent, &*emit);
    }
    let drain = crate::drain::current();
    for message in waiting {
        let message = Ok(Some(message));
        relayed(&*program, &drain, &emit, &mut inbound, usize::MAX, message);
    }
    Ok(Process {
        program,
        edge,
        config,
        listeners: Listeners::new(listeners),
        signals,
        exec,
        emit,
        hooks,
        supervisor,
        inbound,
        control,
        relay_buffer,
        drain,
        earlier: Vec::new(),
        spawned: Vec::new(),
        role: match is_worker {
            true => Role::Worker,
            false => Role::Single(crate::restart::Alone::here()),
        },
        datagrams_given: false,
        accept_reports: std::cell::Cell::new((None, 0)),
    })
}

/// Waits, up to `bound`, for the previous process's state on its relay; what arrives before it
/// (connections it hands over, relays it forwards) is kept in `waiting`. An error says why
/// none came (the relay closed or broke, or the bound passed): this process starts without.
pub(super) async fn inherit_state(
    relay: &Relay,
    buffer: &mut Vec<u8>,
    waiting: &mut Vec<Received>,
    bound: std::time::Duration,
) -> Result<Arrived, String> {
    let receive = async {
        loop {
            match relay.receive(buffer).await {
                Ok(Some(Received::State(state))) => return Ok(state),
                Ok(Some(other)) => waiting.push(other),
                Ok(None) => {
                    return Err("the relay closed before it came: the previous process \
                                exited first, or there was none to take over from"
                        .into());
                }
                Err(e) => return Err(format!("the relay failed: {e}")),
            }
        }
    };
    let late = async {
        Timer::after(bound).await;
        Err(format!("none came within {bound:?}"))
    };
    receive.or(late).await
}

/// The previous process, told that this one is ready, stops serving, finishes what it has in
/// flight, and sends its state on `relay`: nothing is served here until it has arrived, so
/// the state is the one after its last request. Returns the relay to take connections from,
/// and the messages that came before the state (connections handed over meanwhile wait).
async fn take_state(
    relay: Option<Relay>,
    config: &Config,
    hooks: &Hooks,
    emit: &dyn Fn(&Event<'_>),
    relay_buffer: &mut Vec<u8>,
) -> (Inbound, Vec<Received>) {
    let mut waiting = Vec::new();
    let mut inbound = Inbound::default();
    if let Some(relay) = relay {
        relay.set_max_held(config.max_held_bytes);
        let bound = config.drain_timeout + STATE_TIMEOUT;
        let started = std::time::Instant::now();
        let state = inherit_state(&relay, relay_buffer, &mut waiting, bound).await;
        let state = state
            .and_then(|state| state.into_state(config.max_state_bytes))
            .and_then(|state| hooks.inherit(&state).map(|()| state.len()));
        emit(&Event::StateInherited {
            bytes: state.as_ref().ok().copied(),
            why_none: state.as_ref().err().map(String::as_str),
            waited: started.elapsed(),
        });
        inbound.relays.push(relay);
    }
    (inbound, waiting)
}

/// endless waits for this process to shut it down (SIGTERM); only if `parent` is still this
/// process's parent (not init, after it died) and so still the process that handed the
/// sockets over.
fn tell_endless_parent(parent: u32, emit: &dyn Fn(&Event<'_>)) {
    let now = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    if now == parent && parent > 1 {
        if let Some(pid) = rustix::process::Pid::from_raw(parent as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            emit(&Event::EndlessParentTold { pid: parent });
        }
    }
}
