//! Which machine a process runs ([`Role`]), and the one table from a signal to what it does
//! ([`action`]), for every role in every phase. Both machines ask it; neither decides a
//! signal's meaning on its own.

use super::Alone;
use crate::signals::Command;

/// The part a process plays in the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Serves, and replaces itself on a restart (unless [`Alone`]: then it must not).
    Single(Option<Alone>),
    /// Serves for a supervising process, which restarts and stops it over its control
    /// channel.
    Worker,
    /// Keeps the PID and the sockets; serves through workers.
    Supervising,
}

/// Where the process is, as far as a signal is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving, no restart under way.
    Serving,
    /// Serving while a restart (SIGHUP) or a SIGUSR2 successor starts.
    Restarting,
    /// Serving beside a SIGUSR2 successor that serves too (nginx's binary upgrade).
    BesideSuccessor,
    /// Draining after a restart or a shutdown. `first_is_expected`: a worker whose drain
    /// its supervising process started expects the same shutdown signal sent to the whole
    /// process group (a Ctrl-C) once more.
    Draining { first_is_expected: bool },
}

/// What a signal makes the process do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a successor that takes over (SIGHUP), or new workers.
    Restart,
    /// Start a successor that serves beside this process (SIGUSR2).
    Spawn,
    /// Stop accepting, drain, exit.
    Shutdown,
    /// A draining process stops at once: what it still does is cut.
    StopNow,
    /// Collect exited children.
    Reap,
    /// Nothing, for this reason (logged).
    Ignore(&'static str),
}

/// What `command` does to a process of `role` in `phase`.
pub(crate) fn action(role: Role, phase: Phase, command: Command) -> Action {
    use Action::*;
    use Command as C;
    let restarting = matches!(command, C::Restart | C::Spawn);
    match (role, phase, command) {
        (_, _, C::Reap) => Reap,
        (_, Phase::Draining { first_is_expected }, C::Shutdown) => match first_is_expected {
            true => Ignore("the shutdown signal sent to the whole group: draining already"),
            false => StopNow,
        },
        (_, Phase::Draining { .. }, _) => Ignore("draining"),
        (_, _, C::Shutdown) => Shutdown,
        (Role::Worker, _, _) => Ignore("a worker: its supervising process restarts it"),
        (Role::Single(Some(alone)), _, _) => Ignore(alone.why_no_restart()),
        (_, Phase::Restarting, _) if restarting => Ignore("an upgrade is already in progress"),
        (Role::Supervising, _, C::Spawn) => {
            Ignore("a supervising process restarts its workers on SIGHUP")
        }
        (Role::Single(None), Phase::BesideSuccessor, _) => Ignore(
            "the SIGUSR2 successor still runs: SIGQUIT this process to finish the upgrade, or \
             the successor to roll it back",
        ),
        (_, _, C::Spawn) => Spawn,
        (_, _, C::Restart) => Restart,
    }
}

/// The generation limit, the same for every role: with `draining` generations draining (the
/// one that just started counted) besides the one serving, how many of the oldest must end
/// at once so that at most `max` (at least 2) are alive.
pub(crate) fn generations_to_end(draining: usize, max: usize) -> usize {
    (draining + 1).saturating_sub(max.max(2)).min(draining)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 5] = [
        Role::Single(None),
        Role::Single(Some(Alone::Pid1)),
        Role::Single(Some(Alone::BehindInit)),
        Role::Worker,
        Role::Supervising,
    ];
    const PHASES: [Phase; 5] = [
        Phase::Serving,
        Phase::Restarting,
        Phase::BesideSuccessor,
        Phase::Draining {
            first_is_expected: false,
        },
        Phase::Draining {
            first_is_expected: true,
        },
    ];
    const COMMANDS: [Command; 4] = [
        Command::Restart,
        Command::Spawn,
        Command::Shutdown,
        Command::Reap,
    ];

    /// The rules every role shares: children are always collected; a shutdown while
    /// serving drains; a second one while draining stops at once (but for the group's copy
    /// a worker expects); a restart while one is under way is ignored (signals coalesce the
    /// same way in every role); nothing restarts a draining process.
    #[test]
    fn every_role_coalesces_restarts_and_stops_the_same_way() {
        for role in ROLES {
            for phase in PHASES {
                for command in COMMANDS {
                    let action = action(role, phase, command);
                    let draining = matches!(phase, Phase::Draining { .. });
                    match command {
                        Command::Reap => assert_eq!(action, Action::Reap),
                        Command::Shutdown if !draining => assert_eq!(action, Action::Shutdown),
                        Command::Shutdown => assert_eq!(
                            action == Action::StopNow,
                            phase
                                == Phase::Draining {
                                    first_is_expected: false
                                },
                            "{role:?} {phase:?}"
                        ),
                        Command::Restart | Command::Spawn
                            if draining || phase == Phase::Restarting =>
                        {
                            assert!(
                                matches!(action, Action::Ignore(_)),
                                "{role:?} {phase:?} {command:?}"
                            )
                        }
                        Command::Restart | Command::Spawn => {}
                    }
                }
            }
        }
    }

    /// Who restarts on SIGHUP and SIGUSR2: a single process that may replace itself does
    /// both (SIGHUP not beside a SIGUSR2 successor); a supervising process SIGHUP only; a
    /// worker, or a process that must not replace itself, neither, saying why.
    #[test]
    fn who_restarts() {
        let serving = |role, command| action(role, Phase::Serving, command);
        assert_eq!(
            serving(Role::Single(None), Command::Restart),
            Action::Restart
        );
        assert_eq!(serving(Role::Single(None), Command::Spawn), Action::Spawn);
        assert_eq!(
            serving(Role::Supervising, Command::Restart),
            Action::Restart
        );
        let Action::Ignore(why) = serving(Role::Supervising, Command::Spawn) else {
            panic!("a supervising process takes no SIGUSR2")
        };
        assert!(why.contains("on SIGHUP"), "{why}");
        let Action::Ignore(why) = serving(Role::Worker, Command::Restart) else {
            panic!("a worker takes no SIGHUP")
        };
        assert!(why.contains("supervising process restarts it"), "{why}");
        let Action::Ignore(why) = serving(Role::Single(Some(Alone::Pid1)), Command::Restart) else {
            panic!("PID 1 does not replace itself")
        };
        assert!(why.contains("PID 1"), "{why}");
        let beside = action(Role::Single(None), Phase::BesideSuccessor, Command::Restart);
        assert!(matches!(beside, Action::Ignore(why) if why.contains("SIGUSR2 successor")));
    }

    #[test]
    fn the_generation_limit_ends_the_oldest_beyond_it() {
        // Serving plus one draining: always allowed.
        assert_eq!(generations_to_end(1, 2), 0);
        assert_eq!(generations_to_end(2, 3), 0);
        // One over: the oldest ends.
        assert_eq!(generations_to_end(3, 3), 1);
        assert_eq!(generations_to_end(5, 3), 3);
        // A limit under 2 is 2: a restart always leaves the old generation its drain.
        assert_eq!(generations_to_end(1, 0), 0);
        assert_eq!(generations_to_end(2, 1), 1);
        assert_eq!(generations_to_end(0, 3), 0);
    }
}
