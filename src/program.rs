//! What a program is to the core: [`Program`] (what to do with a connection, a moved one, a
//! UDP socket), and what it is given ([`Connection`], [`Resumed`]).

use std::fmt;
use std::rc::Rc;

use crate::drain::Drain;
use crate::event::Event;
use crate::io::datagram::Datagrams;
use crate::io::stream::Stream;

/// A program served by [`crate::Baton::serve`]: what to do with each connection. Its methods run on
/// the thread that runs `serve`; they should start the connection's work (a task on any
/// executor) and return.
pub trait Program: 'static {
    /// A connection this process accepted. Its [`Stream`] counts it for the drain and for
    /// `max_connections` until dropped; [`Connection::drain`] says when the drain starts,
    /// and moves it to the successor ([`Drain::hand_over`]).
    fn accepted(&self, connection: Connection);

    /// A connection the previous process handed over ([`Drain::hand_over`]), under the
    /// kind it named: [`Resumed::take`] it to serve it. Default, and for any `Resumed`
    /// dropped untaken: closed, with a warning event naming the kind and the peer, and
    /// counted in the report as lost.
    fn resumed(&self, resumed: Resumed) {
        drop(resumed);
    }

    /// A UDP listener (`udp:host:port`): given each time this process starts serving, with
    /// the serving round's drain. It counts for the drain until dropped: stop receiving at
    /// the drain notice (the successor serves by then and reads what comes next) and drop
    /// it. Default: dropped at once (nothing is read here).
    fn datagrams(&self, datagrams: Datagrams, drain: Drain) {
        drop((datagrams, drain));
    }
}

/// A connection this process accepted.
#[derive(Debug)]
#[non_exhaustive]
pub struct Connection {
    /// The socket, on the process's edge-triggered readiness; counts the connection for the
    /// drain until dropped. Its addresses: [`Stream::peer`], [`Stream::local`].
    pub stream: Stream,
    /// Which listener accepted it: its index in the order the addresses were given.
    pub listener: usize,
    /// The listener was asked for as `tls:host:port`: the connection starts with a TLS
    /// handshake, which is the program's to make.
    pub tls: bool,
    /// The serving round's drain: its notice, and hand-over to the successor.
    pub drain: Drain,
}

/// A connection the previous process handed over, under a kind: one stream, or the group of
/// streams it moved together ([`Drain::hand_over_group`]). A program takes it
/// ([`Resumed::take`], [`Resumed::take_all`]); one dropped untaken (a kind the program does
/// not know, say) is closed with a warning event that names the kind and the peer, and
/// counted in the report as lost.
pub struct Resumed {
    /// Empty once taken.
    streams: Vec<Stream>,
    kind: String,
    state: serde_json::Value,
    drain: Drain,
    /// Where the refusal of a connection not taken is said.
    events: Rc<dyn Fn(&Event<'_>)>,
}

impl fmt::Debug for Resumed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resumed")
            .field("streams", &self.streams)
            .field("kind", &self.kind)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Resumed {
    pub(crate) fn new(
        streams: Vec<Stream>,
        kind: String,
        state: serde_json::Value,
        drain: Drain,
        events: Rc<dyn Fn(&Event<'_>)>,
    ) -> Resumed {
        Resumed {
            streams,
            kind,
            state,
            drain,
            events,
        }
    }

    /// The streams not taken are closed (dropped with this), said and counted as lost.
    fn refuse(&self) {
        let peer = self.streams.first().map(Stream::peer);
        let why = "this program does not take that kind";
        self.drain.lose(&*self.events, &self.kind, peer, why);
    }

    /// The kind the previous process handed it over under.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The state it came with.
    pub fn state(&self) -> &serde_json::Value {
        &self.state
    }

    /// The serving round's drain: its notice, and hand-over to the successor.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The streams, in the order they were handed over (one, unless a group moved).
    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// Takes the connection: it is the program's to serve. Its reads yield the bytes the
    /// previous process had read and not used first ([`Stream::take_held`] takes them
    /// instead); it counts for the drain until dropped. Of a group, the first stream: the
    /// others are refused (see [`Resumed::take_all`]).
    pub fn take(mut self) -> Stream {
        let first = self.streams.remove(0);
        if !self.streams.is_empty() {
            self.refuse();
            self.streams.clear();
        }
        first
    }

    /// Takes every stream of a group, in the order they were handed over.
    pub fn take_all(mut self) -> Vec<Stream> {
        std::mem::take(&mut self.streams)
    }
}

impl Drop for Resumed {
    fn drop(&mut self) {
        if !self.streams.is_empty() {
            self.refuse();
        }
    }
}
