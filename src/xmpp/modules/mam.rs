//! Message Archive Management (XEP-0313, `urn:xmpp:mam:2`) with unique
//! stanza ids (XEP-0359) and result paging (XEP-0059).
//!
//! Writes go through one background writer that batches inserts into a
//! transaction, so delivering a message never waits for SQLite; a query
//! first waits for the writer to drain, so it sees every message delivered
//! before it.

use super::{BoxFuture, Hook, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store::{self, archive as db},
    xmpp::forms::Form,
    xmpp::Server,
    xmpp::{
        sessions::{bare_of, SessionHandle},
        stanza::{self, Condition, Stanza, StanzaError},
        xml::{elem, ElementExt, NS_CLIENT},
    },
};
use jid::{BareJid, Jid, NodeRef};
use minidom::Element;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::oneshot;

pub use crate::xmpp::ns::{MAM as NS, SID as NS_SID};
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub use crate::xmpp::ns::DATA as NS_DATA;
const DEFAULT_MAX: usize = 50;
const MAX_MAX: usize = 250;

enum Op {
    Insert {
        owner: Owner,
        ts: i64,
        with: String,
        /// Shared by both rows of a message between two local accounts.
        xml: Arc<str>,
    },
    Barrier(oneshot::Sender<()>),
}

/// Whose archive an insert goes to, under which id.
enum Owner {
    /// A local account, by username (its archive preferences apply), and
    /// the row id reserved for the message (its stanza-id, see
    /// [`Archive::insert`]).
    Account { username: String, id: i64 },
    /// A room, by its row id, and the message's stanza-id.
    Room { room: i64, stanza_id: String },
}

/// How long the writer gathers inserts after the first one before it
/// commits them: one commit (and its WAL frames) per batch instead of per
/// message. A query's barrier cuts the wait short, so nobody waits for it.
const LINGER: Duration = Duration::from_millis(10);
/// Most operations written in one transaction.
const MAX_BATCH: usize = 2048;
/// WAL pages after which the writer's commit checkpoints (SQLite's default
/// is 1,000): index and table pages written again and again between
/// checkpoints are copied into the database once.
const WAL_AUTOCHECKPOINT: i64 = 4000;

/// Handle to the archive writer: a thread with its own SQLite connection
/// (see `spawn_workers`).
pub struct Archive {
    /// The last row id handed out; held while the insert is queued, so the
    /// writer receives (and writes) account rows in id order.
    last_id: Mutex<i64>,
    tx: std::sync::mpsc::Sender<Op>,
    // Taken once by `spawn_workers`.
    rx: Mutex<Option<std::sync::mpsc::Receiver<Op>>>,
    /// The writer thread, woken early by barriers.
    writer: OnceLock<std::thread::Thread>,
}

impl Default for Archive {
    fn default() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Archive {
            last_id: Mutex::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
            writer: OnceLock::new(),
        }
    }
}

impl Archive {
    /// Start the writer and the retention sweeper (once, from `run`).
    fn spawn_workers(&self, server: &Arc<Server>) {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(rx) = rx else { return };
        // Its own connection on the same file (WAL: the server's connection
        // keeps reading meanwhile), on a thread of its own: a batch is one
        // wake-up of one thread, not a hop through the blocking pool.
        let conn = match server.store.connection() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the archive writer's connection; archiving is off");
                return;
            }
        };
        match db::max_id(&conn) {
            Ok(max) => {
                let mut last = self.last_id.lock().unwrap_or_else(|p| p.into_inner());
                *last = (*last).max(max);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the archive's last id; archiving is off");
                return;
            }
        }
        if let Err(e) = conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT) {
            tracing::warn!(error = %e, "archive writer: wal_autocheckpoint not set");
        }
        match std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || write_loop(conn, rx))
        {
            Ok(h) => {
                let _ = self.writer.set(h.thread().clone());
            }
            Err(e) => tracing::error!(error = %e, "cannot start the archive writer; archiving is off"),
        }
        let Some(retention) = server.config.archive.retention.map(|d| d.get()) else {
            return;
        };
        let store = server.store.clone();
        let mut stop = server.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let cutoff = now_micros() - retention.as_micros() as i64;
                match store.call(move |c| db::expire(c, cutoff)).await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "expired archive entries"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "archive expiry failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {},
                    _ = crate::shutdown::stopped(&mut stop) => return,
                }
            }
        });
    }

    /// Queue a message for a local account's archive; returns its archive
    /// id. The id is the row's primary key, reserved here: the current time
    /// in microseconds, or one more than the last id if that is not larger
    /// (as ejabberd's MAM ids). Clients get it in decimal as the stanza-id,
    /// and queries find the row by it without an index of their own; the
    /// ids increase with time, which expiry uses instead of an index on
    /// `ts`. Ids from before (UUIDs in the `stanza_id` column) keep working.
    fn insert(&self, owner: Option<&NodeRef>, with: String, xml: Arc<str>) -> Option<i64> {
        let username = owner?.to_string();
        let mut last = self.last_id.lock().unwrap_or_else(|p| p.into_inner());
        let ts = now_micros();
        let id = ts.max(*last + 1);
        *last = id;
        let _ = self.tx.send(Op::Insert {
            owner: Owner::Account { username, id },
            ts,
            with,
            xml,
        });
        Some(id)
    }

    /// Queue a room message for the room's archive (`with`: room/nick of
    /// the sender). Written in the next batch with everything else.
    pub fn insert_room(&self, room: i64, stanza_id: String, with: String, msg: &Element) {
        let _ = self.tx.send(Op::Insert {
            owner: Owner::Room { room, stanza_id },
            ts: now_micros(),
            with,
            xml: msg.to_xml().into(),
        });
    }

    /// Wait until everything queued so far is written (queries, and the
    /// daemon's shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Barrier(tx)).is_ok() {
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
            let _ = rx.await;
        }
    }
}

/// The writer thread: waits for an operation, gathers what follows for
/// [`LINGER`] (or until a barrier), writes it in one transaction, answers
/// the barriers. Ends when the server is gone.
fn write_loop(mut conn: rusqlite::Connection, rx: std::sync::mpsc::Receiver<Op>) {
    use std::sync::mpsc::TryRecvError;
    let mut open = true;
    while open {
        let Ok(first) = rx.recv() else { return };
        let started = std::time::Instant::now();
        let mut batch = vec![first];
        loop {
            match rx.try_recv() {
                Ok(op) => {
                    batch.push(op);
                    if batch.len() < MAX_BATCH {
                        continue;
                    }
                }
                Err(TryRecvError::Empty) => {
                    let waited = started.elapsed();
                    let barrier = batch.iter().any(|o| matches!(o, Op::Barrier(_)));
                    if !barrier && waited < LINGER {
                        // Senders do not wake this thread; a barrier does.
                        std::thread::park_timeout(LINGER - waited);
                        continue;
                    }
                }
                Err(TryRecvError::Disconnected) => open = false,
            }
            break;
        }
        let mut barriers = Vec::new();
        let mut inserts = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Barrier(b) => barriers.push(b),
                insert => inserts.push(insert),
            }
        }
        if !inserts.is_empty() {
            // A failed transaction wrote nothing: try the batch again
            // (the database may be locked by a long write elsewhere).
            for attempt in 1..=3 {
                match write_batch(&mut conn, &inserts) {
                    Ok(()) => break,
                    Err(e) if attempt < 3 => {
                        tracing::warn!(error = %e, attempt, "archive write failed; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => tracing::error!(error = %e, lost = inserts.len(), "archive write failed"),
                }
            }
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

/// One transaction for a batch; an account's id and preferences are read
/// once per batch.
fn write_batch(conn: &mut rusqlite::Connection, inserts: &[Op]) -> store::Result<()> {
    // IMMEDIATE, as every store connection's transactions (see
    // `store::open_connection`).
    let tx = conn.transaction()?;
    let mut rows = db::ReservedInserts::new(&tx)?;
    let mut accounts: HashMap<&str, Option<(i64, db::Prefs)>> = HashMap::new();
    for op in inserts {
        let Op::Insert { owner, ts, with, xml } = op else {
            continue;
        };
        match owner {
            Owner::Account { username, id: row } => {
                let account = match accounts.get(username.as_str()) {
                    Some(a) => a,
                    None => {
                        let a = match store::accounts::id_of(&tx, username)? {
                            Some(id) => Some((id, db::prefs(&tx, id)?)),
                            None => None,
                        };
                        accounts.entry(username.as_str()).or_insert(a)
                    }
                };
                let Some((id, prefs)) = account else { continue };
                if db::wanted_by(&tx, *id, prefs, with)? {
                    rows.insert(*row, *id, *ts, with, xml)?;
                }
            }
            Owner::Room { room, stanza_id } => db::insert_room(&tx, *room, stanza_id, *ts, with, xml)?,
        }
    }
    drop(rows);
    tx.commit()?;
    Ok(())
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A new XEP-0359 stanza id for rooms (account archives use row ids, see
/// [`Archive::insert`]): a UUID version 7 (milliseconds since the epoch,
/// then 74 random bits from the thread's generator, no system call). Ids
/// made one after another sort together, so each room archive insert lands
/// at the end of its room's part of the `(room_id, stanza_id)` index
/// instead of on a random page of it.
pub fn new_stanza_id() -> String {
    let ms = (now_micros() / 1000) as u64;
    uuid::Builder::from_unix_timestamp_millis(ms, &rand::random())
        .into_uuid()
        .to_string()
}

/// Whether a message belongs in an archive: it carries a body or an
/// encrypted payload and does not ask not to be stored.
pub fn archivable(msg: &Element) -> bool {
    if matches!(stanza::typ(msg), "error" | "groupchat" | "headline") {
        return false;
    }
    if msg.has_child("no-store", "urn:xmpp:hints") || msg.has_child("no-permanent-store", "urn:xmpp:hints") {
        return false;
    }
    msg.children().any(|c| {
        matches!(c.name(), "body" | "encrypted")
            || c.has_ns("eu.siacs.conversations.axolotl")
            || c.has_ns("urn:xmpp:omemo:2")
            || c.has_ns("urn:xmpp:jingle-message:0")
    })
}

/// A message for local account `owner`: stamp it with a stanza-id
/// (removing any that claims to be ours) and archive it. The archived text
/// is the message as it arrived, without the stanza-id (the query result
/// carries the id), so that it is the sender's text: a message a local
/// session sent carries the serialisation its sender's row was written
/// from, and the recipient's row reuses it.
fn archive_incoming(archive: &Archive, owner: &BareJid, msg: &mut Stanza) {
    let by = owner.to_string();
    // XEP-0359 §5: a stanza-id by us that we did not add is a forgery.
    let forged = |c: &Element| c.is("stanza-id", NS_SID) && c.attr("by") == Some(by.as_str());
    if msg.el().children().any(forged) {
        let kept = crate::xmpp::xml::retain_children(msg.el(), |c| !forged(c));
        *msg.el_mut() = kept;
    }
    if !archivable(msg.el()) {
        return;
    }
    let xml = msg.xml();
    let with = bare_of(msg.from.as_str()).to_string();
    if let Some(id) = archive.insert(owner.node(), with, xml) {
        msg.el_mut()
            .append_child(elem("stanza-id", NS_SID).with("id", id.to_string()).with("by", by));
    }
}

/// A message sent by a local session: archive it in the sender's archive.
fn archive_outgoing(archive: &Archive, me: &SessionHandle, msg: &mut Stanza) {
    if archivable(msg.el()) {
        let with = bare_of(msg.to.as_str()).to_string();
        archive.insert(me.jid.node(), with, msg.xml());
    }
}

#[derive(Default)]
pub struct Mam {
    archive: Archive,
}

impl Mam {
    /// The archive writer of a running server.
    pub fn archive(server: &Server) -> &Archive {
        &server
            .modules
            .get::<Mam>()
            .expect("the mam module is always registered")
            .archive
    }
}

impl Module for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }
    fn start(&self, server: &Arc<Server>) {
        self.archive.spawn_workers(server);
    }
    fn hooks(&self) -> &'static [Hook] {
        &[Hook::MessageIn, Hook::MessageOut]
    }
    fn message_in(&self, _server: &Arc<Server>, to: &BareJid, msg: &mut Stanza) {
        archive_incoming(&self.archive, to, msg)
    }
    fn message_out(&self, _server: &Arc<Server>, from: &Arc<SessionHandle>, msg: &mut Stanza) {
        archive_outgoing(&self.archive, from, msg)
    }
    fn account_features(&self) -> &'static [&'static str] {
        &[NS, "urn:xmpp:mam:2#extended", NS_SID]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                name: "query",
                ns: NS,
                target: Target::OwnAccount,
            },
            IqRoute {
                name: "prefs",
                ns: NS,
                target: Target::OwnAccount,
            },
        ]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            match (ctx.payload.name(), ctx.set) {
                ("query", true) => query(&ctx).await,
                ("query", false) => Ok(Some(query_form())),
                ("prefs", false) => get_prefs(&ctx).await,
                ("prefs", true) => set_prefs(&ctx).await,
                _ => Err(Condition::BadRequest.into()),
            }
        })
    }
}

fn query_form() -> Element {
    let field = |var: &str, t: &str| elem("field", NS_DATA).with("var", var).with("type", t);
    elem("query", NS).child(
        elem("x", NS_DATA)
            .with("type", "form")
            .child(field("FORM_TYPE", "hidden").child(elem("value", NS_DATA).text_child(NS)))
            .child(field("with", "jid-single"))
            .child(field("start", "text-single"))
            .child(field("end", "text-single"))
            .child(field("before-id", "text-single"))
            .child(field("after-id", "text-single"))
            .child(field("ids", "text-multi")),
    )
}

fn parse_time(s: &str) -> Result<i64, StanzaError> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(s))
        .map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0))
        .map_err(|_| StanzaError::new(Condition::BadRequest, format!("`{s}` is not an XEP-0082 date-time")))
}

fn user_of(ctx: &IqCtx<'_>) -> String {
    ctx.from.node().map(|n| n.to_string()).unwrap_or_default()
}

/// Read a MAM query (`<query/>` payload): its form and RSM page.
pub fn parse_query(payload: &Element) -> Result<db::Query, StanzaError> {
    let mut q = db::Query {
        max: DEFAULT_MAX,
        ..Default::default()
    };
    if let Some(form) = Form::child_of(payload) {
        if !form.is_type_or_untyped(NS) {
            return Err(StanzaError::new(Condition::BadRequest, "unknown FORM_TYPE"));
        }
        for f in form.fields {
            let first = f.values.first().cloned().unwrap_or_default();
            match f.var.as_str() {
                "with" => {
                    let j = Jid::new(&first).map_err(|_| StanzaError::from(Condition::JidMalformed))?;
                    q.with = Some(j.to_bare().to_string());
                }
                "start" => q.start = Some(parse_time(&first)?),
                "end" => q.end = Some(parse_time(&first)?),
                "after-id" => q.after = Some(first),
                "before-id" => q.before = Some(first),
                "ids" => q.ids = f.values,
                other => {
                    return Err(StanzaError::new(
                        Condition::FeatureNotImplemented,
                        format!("unsupported field `{other}`"),
                    ));
                }
            }
        }
    }
    if let Some(set) = payload.get_child("set", NS_RSM) {
        if let Some(m) = set.get_child("max", NS_RSM) {
            q.max = m
                .text()
                .trim()
                .parse()
                .map_err(|_| StanzaError::from(Condition::BadRequest))?;
        }
        if let Some(a) = set.get_child("after", NS_RSM) {
            q.after = Some(a.text());
        }
        if let Some(b) = set.get_child("before", NS_RSM) {
            q.before = Some(b.text());
        }
    }
    q.max = q.max.min(MAX_MAX);
    Ok(q)
}

async fn query(ctx: &IqCtx<'_>) -> IqReply {
    let q = parse_query(ctx.payload)?;
    Mam::archive(ctx.server).flush().await;
    let username = user_of(ctx);
    let page = ctx
        .server
        .store
        .call(move |c| {
            let Some(id) = store::accounts::id_of(c, &username)? else {
                return Ok(None);
            };
            Ok(Some(db::query(c, id, &q)?))
        })
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?
        .ok_or_else(|| StanzaError::from(Condition::ItemNotFound))?
        .map_err(|_| StanzaError::new(Condition::ItemNotFound, "no archived message has that id"))?;
    let queryid = ctx.payload.attr("queryid");
    let (results, fin) = page_results(&page, queryid, &ctx.from.to_string(), &ctx.from.to_bare().to_string());
    let session = ctx.from.try_as_full().ok().and_then(|f| ctx.server.sessions.get(f));
    if let Some(s) = &session {
        for r in results {
            s.send(r);
        }
    }
    Ok(Some(fin))
}

/// The result messages of a page (to `to`, from the archive's JID `from`)
/// and the `<fin/>` that ends the query.
pub fn page_results(page: &db::Page, queryid: Option<&str>, to: &str, from: &str) -> (Vec<Element>, Element) {
    let mut out = Vec::with_capacity(page.rows.len());
    for r in &page.rows {
        let Ok(original) = r.stanza.parse::<Element>() else {
            continue;
        };
        let stamp = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(r.ts as u64)).to_string();
        out.push(
            elem("message", NS_CLIENT)
                .with("to", to.to_string())
                .with("from", from.to_string())
                .child(
                    elem("result", NS)
                        .with_opt("queryid", queryid.map(str::to_string))
                        .with("id", r.stanza_id.clone())
                        .child(
                            elem("forwarded", super::carbons::NS_FORWARD)
                                .child(elem("delay", "urn:xmpp:delay").with("stamp", stamp))
                                .child(original),
                        ),
                ),
        );
    }
    let mut set = elem("set", NS_RSM);
    if let (Some(first), Some(last)) = (page.rows.first(), page.rows.last()) {
        set.append_child(elem("first", NS_RSM).text_child(first.stanza_id.clone()));
        set.append_child(elem("last", NS_RSM).text_child(last.stanza_id.clone()));
    }
    set.append_child(elem("count", NS_RSM).text_child(page.count.to_string()));
    let mut fin = elem("fin", NS)
        .with_opt("queryid", queryid.map(str::to_string))
        .child(set);
    if page.complete {
        fin.set("complete", "true");
    }
    (out, fin)
}

fn prefs_element(p: &db::Prefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        let mut e = elem(name, NS);
        for j in jids {
            e.append_child(elem("jid", NS).text_child(j.clone()));
        }
        e
    };
    elem("prefs", NS)
        .with("default", p.default.as_str())
        .child(list("always", &p.always))
        .child(list("never", &p.never))
}

async fn get_prefs(ctx: &IqCtx<'_>) -> IqReply {
    let username = user_of(ctx);
    let p = ctx
        .server
        .store
        .call(move |c| match store::accounts::id_of(c, &username)? {
            Some(id) => db::prefs(c, id),
            None => Ok(db::Prefs::default()),
        })
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
    Ok(Some(prefs_element(&p)))
}

async fn set_prefs(ctx: &IqCtx<'_>) -> IqReply {
    let default = ctx
        .payload
        .attr("default")
        .and_then(db::DefaultMode::parse)
        .ok_or_else(|| StanzaError::new(Condition::BadRequest, "default must be always, never or roster"))?;
    let jids = |name: &str| -> Result<Vec<String>, StanzaError> {
        let mut v = vec![];
        if let Some(l) = ctx.payload.get_child(name, NS) {
            for j in l.children().filter(|j| j.name() == "jid") {
                let jid = Jid::new(&j.text()).map_err(|_| StanzaError::from(Condition::JidMalformed))?;
                v.push(jid.to_bare().to_string());
            }
        }
        Ok(v)
    };
    let p = db::Prefs {
        default,
        always: jids("always")?,
        never: jids("never")?,
    };
    let username = user_of(ctx);
    let saved = p.clone();
    ctx.server
        .store
        .call(move |c| match store::accounts::id_of(c, &username)? {
            Some(id) => db::set_prefs(c, id, &saved),
            None => Ok(()),
        })
        .await
        .map_err(|_| StanzaError::from(Condition::InternalServerError))?;
    Ok(Some(prefs_element(&p)))
}
