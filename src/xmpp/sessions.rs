//! The registry of bound client sessions: the only owner of "who is online".

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicI8, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

/// What the rest of the server can tell a session task.
///
/// Stanzas are boxed: a message waiting in the [`inbox`] is then 24 bytes
/// beside its stanza.
#[derive(Debug)]
pub enum ToSession {
    /// A stanza to write to the client.
    Stanza(Box<Element>),
    /// A message from the offline table (its row id): deleted there once the
    /// client has shown it has it (`xmpp::offline`).
    Stored(Box<Element>, i64),
    /// Another login bound the same resource: close with `<conflict/>`.
    Replaced,
    /// A new connection resumes this session (XEP-0198).
    Resume(Box<crate::xmpp::c2s::session::ResumeRequest>),
}

/// A session's inbox: what [`SessionHandle::tx`] sends and the session task
/// receives. futures' unbounded channel, whose empty queue is one 32-byte
/// node beside its shared state (~200 bytes in all), where tokio's
/// unbounded channel makes a block of 32 slots and cache-padded state with
/// the channel (1.3 KiB for every idle session). One allocation per message
/// instead, which is noise beside the stanza's own.
pub mod inbox {
    use super::ToSession;
    use futures_channel::mpsc;

    /// A new inbox.
    pub fn new() -> (Sender, Receiver) {
        let (tx, rx) = mpsc::unbounded();
        (Sender(tx), Receiver(rx))
    }

    /// The sending side (many may exist).
    #[derive(Debug, Clone)]
    pub struct Sender(mpsc::UnboundedSender<ToSession>);

    /// The session task ended: what was sent comes back.
    #[derive(Debug)]
    pub struct SendError(pub ToSession);

    impl Sender {
        pub fn send(&self, m: ToSession) -> Result<(), SendError> {
            self.0.unbounded_send(m).map_err(|e| SendError(e.into_inner()))
        }

        /// Whether the session task is gone.
        pub fn is_closed(&self) -> bool {
            self.0.is_closed()
        }
    }

    /// The session task's side.
    #[derive(Debug)]
    pub struct Receiver(mpsc::UnboundedReceiver<ToSession>);

    impl Receiver {
        /// The next message, or `None` once every sender is gone.
        /// Cancel-safe: a message is taken only when it is returned.
        pub async fn recv(&mut self) -> Option<ToSession> {
            self.0.recv().await.ok()
        }

        /// Refuse further messages; those already sent can still be taken.
        pub fn close(&mut self) {
            self.0.close();
        }

        /// A message already waiting, if any.
        pub fn try_recv(&mut self) -> Option<ToSession> {
            self.0.try_recv().ok()
        }
    }
}

/// Presence state of a session, readable by other tasks.
#[derive(Debug, Default)]
pub struct PresenceState {
    /// Sent initial presence and not yet unavailable.
    pub available: AtomicBool,
    pub priority: AtomicI8,
    /// Requested the roster (RFC 6121 "interested resource").
    pub interested: AtomicBool,
    /// The last available presence broadcast, for probes, without `from`
    /// and `to` (each use sets both).
    // std Mutex: copied in and out, never held across an await.
    pub last: Mutex<Option<Element>>,
    /// Entities that got directed presence and must get our unavailable.
    pub directed: Mutex<HashSet<Jid>>,
}

#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    pub jid: FullJid,
    pub tx: inbox::Sender,
    pub presence: PresenceState,
    /// XEP-0280 carbons enabled.
    pub carbons: AtomicBool,
    /// XEP-0352: the client said it is inactive.
    pub inactive: AtomicBool,
    /// XEP-0198: the connection is gone and the session waits for resumption.
    pub hibernating: AtomicBool,
}

impl SessionHandle {
    pub fn new(id: u64, jid: FullJid, tx: inbox::Sender) -> SessionHandle {
        SessionHandle {
            id,
            jid,
            tx,
            presence: PresenceState::default(),
            carbons: AtomicBool::new(false),
            inactive: AtomicBool::new(false),
            hibernating: AtomicBool::new(false),
        }
    }
    pub fn set_inactive(&self, v: bool) {
        self.inactive.store(v, Ordering::Relaxed);
    }
    /// Whether the client is asleep: hibernated (XEP-0198) or inactive (XEP-0352).
    pub fn asleep(&self) -> bool {
        self.hibernating.load(Ordering::Relaxed) || self.inactive.load(Ordering::Relaxed)
    }
    pub fn send(&self, stanza: Element) -> bool {
        self.tx.send(ToSession::Stanza(Box::new(stanza))).is_ok()
    }
    pub fn available(&self) -> bool {
        self.presence.available.load(Ordering::Relaxed)
    }
    pub fn priority(&self) -> i8 {
        self.presence.priority.load(Ordering::Relaxed)
    }
}

/// The bare part of a JID's text (everything before the resource's `/`:
/// neither a node nor a domain holds one).
pub fn bare_of(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}

#[derive(Default)]
pub struct Sessions {
    // std RwLock: held for map operations only, never across an await or a send.
    /// Keyed by the bare JID's text: a full JID finds its account's entry
    /// by a slice of its own, without building a `BareJid` per look-up.
    map: RwLock<HashMap<String, Vec<Arc<SessionHandle>>>>,
    /// XEP-0198 resumption ids of sessions that may be resumed.
    resumable: Mutex<HashMap<String, Arc<SessionHandle>>>,
    next_id: AtomicU64,
    /// Bound sessions (the map's total length), for the metrics gauge.
    bound: AtomicUsize,
}

impl Sessions {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Register a session; returns the session it replaces (same full JID).
    pub fn bind(&self, h: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(bare_of(h.jid.as_str()).to_string()).or_default();
        let old = list.iter().position(|s| s.jid == h.jid).map(|i| list.swap_remove(i));
        list.push(h);
        if old.is_none() {
            let n = self.bound.fetch_add(1, Ordering::Relaxed) + 1;
            crate::metrics::sessions_online(n);
        }
        old
    }

    pub fn make_resumable(&self, resume_id: &str, h: &Arc<SessionHandle>) {
        let mut m = self.resumable.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(resume_id.to_string(), h.clone());
    }

    /// The session a resumption id names, if it belongs to `owner`.
    pub fn resumable(&self, resume_id: &str, owner: &BareJid) -> Option<Arc<SessionHandle>> {
        let m = self.resumable.lock().unwrap_or_else(|p| p.into_inner());
        m.get(resume_id).filter(|h| &h.jid.to_bare() == owner).cloned()
    }

    /// Remove a session if it is still the one registered under its JID.
    pub fn unbind(&self, jid: &FullJid, id: u64) {
        {
            let mut m = self.resumable.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, h| h.id != id);
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let bare = bare_of(jid.as_str());
        if let Some(list) = map.get_mut(bare) {
            let before = list.len();
            list.retain(|s| s.id != id);
            if list.len() < before {
                let n = self.bound.fetch_sub(1, Ordering::Relaxed) - 1;
                crate::metrics::sessions_online(n);
            }
            if list.is_empty() {
                map.remove(bare);
            }
        }
    }

    pub fn get(&self, jid: &FullJid) -> Option<Arc<SessionHandle>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(bare_of(jid.as_str()))?.iter().find(|s| &s.jid == jid).cloned()
    }

    /// Whether a session of the account `bare` (a bare JID's text) is one
    /// `f` accepts: a check that copies no list.
    pub fn any_of(&self, bare: &str, f: impl Fn(&SessionHandle) -> bool) -> bool {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(bare).is_some_and(|l| l.iter().any(|s| f(s)))
    }

    /// Every session of an account.
    pub fn of(&self, bare: &BareJid) -> Vec<Arc<SessionHandle>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(bare.as_str()).cloned().unwrap_or_default()
    }

    pub fn is_resource_taken(&self, jid: &FullJid) -> bool {
        self.get(jid).is_some()
    }

    /// Every session (for shutdown and metrics).
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.values().flatten().cloned().collect()
    }

    pub fn count(&self) -> usize {
        self.bound.load(Ordering::Relaxed)
    }
}
