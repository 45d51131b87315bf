//! What a supervising process carries across its own `execve` (in `BATON_SUPERVISOR`): its
//! generation, its workers with their control channels' fds. The
//! listeners travel as `LISTENER` does for any successor.
//!
//! `{"version":1,"generation":2,"workers":[{"pid":41,"control_fd":9,
//! "generation":2,"slot":0}],"retiring":[{"pid":38,"control_fd":10,"generation":1}]}`; a
//! version this build does not know is an error (`slot` may be missing, as builds before it
//! wrote none: the worker's index then; a retiring worker may be a bare pid, as they wrote
//! it: of an unknown generation, without a channel).

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use crate::error::invalid_msg;
use crate::listener::SUPERVISOR_ENV;

const VERSION: u64 = 1;

/// A worker as carried: its control channel is an fd number before the exec, owned after.
#[derive(Debug)]
pub(crate) struct CarriedWorker<F> {
    pub(crate) pid: u32,
    pub(crate) control: F,
    pub(crate) generation: u64,
    /// Its place among the workers, if the state says.
    pub(crate) slot: Option<usize>,
}

/// What is carried; `F` as for [`CarriedWorker`].
#[derive(Debug)]
pub(crate) struct Carried<F> {
    pub(crate) generation: u64,
    pub(crate) workers: Vec<CarriedWorker<F>>,
    /// Workers still draining, with their channels if they still have them.
    pub(crate) retiring: Vec<CarriedWorker<Option<F>>>,
}

impl Carried<RawFd> {
    /// The JSON text (the workers' fds as numbers).
    pub(crate) fn to_json(&self) -> String {
        let workers = self.workers.iter().map(|w| entry(w, Some(w.control)));
        let retiring = self.retiring.iter().map(|w| entry(w, w.control));
        let mut object = serde_json::Map::new();
        object.insert("version".into(), VERSION.into());
        object.insert("generation".into(), self.generation.into());
        object.insert("workers".into(), workers.collect());
        object.insert("retiring".into(), retiring.collect());
        crate::json::text(&object.into())
    }
}

/// One worker as the JSON text carries it (a retiring one's `slot` is null). Built field by
/// field rather than with `json!`, which would serialise each `Value` once more.
fn entry<F>(worker: &CarriedWorker<F>, control_fd: Option<RawFd>) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    object.insert("pid".into(), worker.pid.into());
    object.insert("control_fd".into(), control_fd.into());
    object.insert("generation".into(), worker.generation.into());
    object.insert("slot".into(), worker.slot.into());
    object.into()
}

impl Carried<OwnedFd> {
    /// Parses the text and claims each worker's control channel (checked first).
    pub(crate) fn parse(text: &str) -> io::Result<Carried<OwnedFd>> {
        let bad = |what: &str| invalid_msg(format!("{SUPERVISOR_ENV}: {what}"));
        let json = crate::json::parse(text).map_err(|e| bad(&format!("not valid JSON: {e}")))?;
        let number = |value: &serde_json::Value, key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| bad(&format!("\"{key}\" is missing or not a number")))
        };
        let version = number(&json, "version")?;
        if version != VERSION {
            return Err(bad(&format!(
                "version {version}, this build reads version {VERSION}"
            )));
        }
        let pid = |n: u64| u32::try_from(n).map_err(|_| bad("a pid out of range"));
        let mut workers = Vec::new();
        for worker in json["workers"].as_array().into_iter().flatten() {
            let fd = RawFd::try_from(number(worker, "control_fd")?)
                .map_err(|_| bad("a control_fd out of range"))?;
            workers.push(CarriedWorker {
                pid: pid(number(worker, "pid")?)?,
                control: crate::listener::claim_channel(
                    fd,
                    &format!("{SUPERVISOR_ENV}: control_fd"),
                )?,
                generation: number(worker, "generation")?,
                slot: worker
                    .get("slot")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|slot| usize::try_from(slot).ok()),
            });
        }
        let mut retiring = Vec::new();
        for value in json["retiring"].as_array().into_iter().flatten() {
            let worker = match value.as_u64() {
                Some(bare) => CarriedWorker {
                    pid: pid(bare)?,
                    control: None,
                    generation: 0,
                    slot: None,
                },
                None => CarriedWorker {
                    pid: pid(number(value, "pid")?)?,
                    control: match value.get("control_fd") {
                        None | Some(serde_json::Value::Null) => None,
                        Some(_) => Some(crate::listener::claim_channel(
                            RawFd::try_from(number(value, "control_fd")?)
                                .map_err(|_| bad("a control_fd out of range"))?,
                            &format!("{SUPERVISOR_ENV}: a retiring worker's control_fd"),
                        )?),
                    },
                    generation: number(value, "generation")?,
                    slot: None,
                },
            };
            retiring.push(worker);
        }
        Ok(Carried {
            generation: number(&json, "generation")?,
            workers,
            retiring,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_names_what_is_wrong() {
        let carried = Carried {
            generation: 3,
            workers: Vec::new(),
            retiring: [(7, 1), (8, 2)]
                .map(|(pid, generation)| CarriedWorker {
                    pid,
                    control: None,
                    generation,
                    slot: None,
                })
                .into(),
        };
        let text = carried.to_json();
        let back = Carried::parse(&text).unwrap();
        assert_eq!(back.generation, 3);
        let retiring: Vec<(u32, u64)> = back
            .retiring
            .iter()
            .map(|w| (w.pid, w.generation))
            .collect();
        assert_eq!(retiring, [(7, 1), (8, 2)]);
        // As builds before the generations were carried wrote it.
        let bare = r#"{"version":1,"generation":3,"workers":[],"retiring":[7,8]}"#;
        let back = Carried::parse(bare).unwrap();
        let retiring: Vec<(u32, u64)> = back
            .retiring
            .iter()
            .map(|w| (w.pid, w.generation))
            .collect();
        assert_eq!(retiring, [(7, 0), (8, 0)]);
        let old = text.replace("\"version\":1", "\"version\":9");
        let error = Carried::parse(&old).unwrap_err().to_string();
        assert!(error.contains("version 9"), "{error}");
        let error = Carried::parse("{").unwrap_err().to_string();
        assert!(error.contains("BATON_SUPERVISOR"), "{error}");
    }

    #[test]
    fn a_control_fd_that_is_no_channel_is_named_as_the_state_says() {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        let text = format!(
            r#"{{"version":1,"generation":1,"workers":[{{"pid":4,"control_fd":{fd},"generation":1}}],"retiring":[]}}"#
        );
        let error = Carried::parse(&text).unwrap_err().to_string();
        assert!(
            error.contains(&format!("BATON_SUPERVISOR: control_fd {fd}")),
            "{error}"
        );
    }
}
