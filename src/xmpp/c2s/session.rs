//! A bound client session: the loop that moves stanzas between the client
//! and the router, with stream management (XEP-0198: acks, hibernation and
//! resumption), client state indication (XEP-0352) and carbons (XEP-0280).
//!
//! The session outlives its TCP connection when resumption is enabled: the
//! task keeps the session's queue while hibernating, and a new connection
//! hands its stream over through the session's channel.

use super::{end, ClientStream};
use crate::{
    shutdown::stopped,
    xmpp::Server,
    xmpp::{
        offline, presence,
        router::{self, route},
        sessions::{inbox, SessionHandle, ToSession},
        stanza::{iq_result, Kind, Stanza},
        stream::{new_id, ConnError},
        xml::{self, elem, ElementExt, Event, StreamError, NS_CLIENT, NS_SESSION},
    },
};
use minidom::Element;
use std::{collections::VecDeque, sync::Arc, time::Duration};
use tokio::time::Instant;

pub const NS_SM: &str = "urn:xmpp:sm:3";
pub const NS_CSI: &str = "urn:xmpp:csi:0";

/// A new connection taking over a hibernating (or still connected) session.
pub struct ResumeRequest {
    pub xs: Box<ClientStream>,
    /// How many of our stanzas the client says it handled.
    pub h: u32,
    /// SASL2 inline resumption (XEP-0198 §6.2): the `<success/>` that
    /// `<resumed/>` and the authorization identifier go into.
    pub success: Option<Element>,
}

impl std::fmt::Debug for ResumeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResumeRequest(h={})", self.h)
    }
}

/// XEP-0198 state of a session.
struct Sm {
    /// Set when resumption was granted.
    resume_id: Option<String>,
    /// Stanzas received from the client.
    h_in: u32,
    /// Stanzas sent to the client, and those not yet acknowledged (oldest first).
    out: u32,
    unacked: VecDeque<Sent>,
    ack_pending: bool,
}

/// A stanza written to the client, with its offline row when it has one.
struct Sent {
    el: Element,
    stored: Option<i64>,
}

impl Sm {
    /// Drop what the client acknowledged (`h` counts all stanzas ever sent);
    /// returns the offline rows now proven delivered.
    fn ack(&mut self, h: u32) -> Result<Vec<i64>, StreamError> {
        let acked_before = self.out.wrapping_sub(self.unacked.len() as u32);
        let newly = h.wrapping_sub(acked_before);
        if newly as usize > self.unacked.len() {
            // The client acknowledges more than we ever sent.
            return Err(StreamError::UndefinedCondition);
        }
        Ok(self.unacked.drain(..newly as usize).filter_map(|s| s.stored).collect())
    }
}

/// Without stream management: offline rows written to the client, and the
/// ping whose answer will prove it read them (see `xmpp::offline`).
#[derive(Default)]
struct Proof {
    /// Written, no ping sent for them yet.
    unproven: Vec<i64>,
    /// The ping in flight and the rows it covers.
    pending: Option<(String, Vec<i64>)>,
}

/// CSI: stanzas held while the client says it is inactive.
#[derive(Default)]
struct Csi {
    inactive: bool,
    held: Vec<(Element, Option<i64>)>,
}

/// Most stanzas held for an inactive client before everything is flushed.
const CSI_MAX_HELD: usize = 64;
/// Most unacknowledged stanzas kept for one session.
const SM_MAX_UNACKED: usize = 10_000;
/// Quiet time after which a session's stream frees its parser
/// ([`XmlStream::rest`]): most sessions are idle most of the time, and
/// rebuilding a parser costs microseconds.
const REST_AFTER: Duration = Duration::from_secs(1);

pub struct Session {
    server: Arc<Server>,
    me: Arc<SessionHandle>,
    rx: inbox::Receiver,
    sm: Option<Sm>,
    csi: Csi,
    proof: Proof,
}

/// How one connection of a session ended.
enum End {
    /// `</stream:stream>` from the client.
    Closed,
    /// The daemon stops.
    Shutdown,
    /// Another connection resumed this session.
    Resumed(Box<ResumeRequest>),
    /// A protocol error: the stream is ended with this error, no hibernation.
    Fatal(ConnError),
    /// The connection was lost (I/O error, EOF, timeout): hibernate if resumable.
    Lost(ConnError),
}

impl Session {
    pub fn new(server: Arc<Server>, me: Arc<SessionHandle>, rx: inbox::Receiver) -> Session {
        Session {
            server,
            me,
            rx,
            sm: None,
            csi: Csi::default(),
            proof: Proof::default(),
        }
    }

    pub fn handle(&self) -> &Arc<SessionHandle> {
        &self.me
    }

    /// XEP-0198 `<enable/>` (on the stream, or inline in Bind 2): returns
    /// `<enabled/>`, or `<failed/>` when it is already on.
    pub fn enable_sm(&mut self, enable: &Element) -> Element {
        if self.sm.is_some() {
            return failed("unexpected-request");
        }
        let wants_resume = matches!(enable.attr("resume"), Some("true" | "1"));
        let resume_id = wants_resume.then(new_id);
        let mut enabled = elem("enabled", NS_SM);
        if let Some(id) = &resume_id {
            let max = self.server.config.limits.hibernation_timeout.get().as_secs();
            enabled = enabled
                .with("id", id.clone())
                .with("resume", "true")
                .with("max", max.to_string());
            self.server.sessions.make_resumable(id, &self.me);
        }
        self.sm = Some(Sm {
            resume_id,
            h_in: 0,
            out: 0,
            unacked: VecDeque::new(),
            ack_pending: false,
        });
        enabled
    }

    /// XEP-0352 state chosen before the session starts (Bind 2 inline).
    pub fn set_inactive(&mut self, inactive: bool) {
        self.csi.inactive = inactive;
        self.me.set_inactive(inactive);
    }

    /// Whether stream management is on.
    pub fn sm_enabled(&self) -> bool {
        self.sm.is_some()
    }

    /// Serve the session across connections until it ends for good.
    pub async fn run(mut self, mut xs: Box<ClientStream>) {
        loop {
            let end = self.serve(&mut xs).await;
            // What follows happens once or rarely: boxed, so that the task
            // of an idle session does not carry its state (see `serve`).
            match end {
                End::Closed => {
                    Box::pin(xs.close()).await;
                    tracing::info!("session closed by the client");
                    break;
                }
                End::Shutdown => {
                    Box::pin(end_stream(
                        &self.server,
                        &mut xs,
                        ConnError::Stream(StreamError::SystemShutdown),
                    ))
                    .await;
                    break;
                }
                End::Fatal(e) => {
                    tracing::info!(reason = %e, "session ended");
                    Box::pin(end_stream(&self.server, &mut xs, e)).await;
                    break;
                }
                End::Resumed(req) => {
                    // The old connection is abandoned for the new one.
                    drop(xs);
                    let ResumeRequest { xs: new, h, success } = *req;
                    xs = new;
                    if !Box::pin(self.resumed(&mut xs, h, success)).await {
                        break;
                    }
                }
                End::Lost(e) => {
                    // A stream that went silent is still open: say why it
                    // ends (RFC 6120 §4.9.3.4) before the session ends or
                    // hibernates, as a lost one would.
                    if matches!(e, ConnError::Timeout) {
                        Box::pin(end_stream(&self.server, &mut xs, ConnError::Timeout)).await;
                    }
                    let resumable = self.sm.as_ref().is_some_and(|s| s.resume_id.is_some());
                    if !resumable {
                        tracing::info!(reason = %e, "session ended");
                        break;
                    }
                    tracing::info!(reason = %e, "connection lost; session hibernates");
                    match Box::pin(self.hibernate()).await {
                        Some(req) => {
                            let ResumeRequest { xs: new, h, success } = *req;
                            xs = new;
                            if !Box::pin(self.resumed(&mut xs, h, success)).await {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
        }
        Box::pin(self.finish()).await;
    }

    /// Tell the new connection the session is back and retransmit. With
    /// SASL2, `<resumed/>` goes inside its `<success/>`, and no stream
    /// features follow (XEP-0198 §6.2).
    async fn resumed(&mut self, xs: &mut ClientStream, h: u32, success: Option<Element>) -> bool {
        let Some(sm) = self.sm.as_mut() else { return false };
        match sm.ack(h) {
            Ok(proven) => offline::delivered(&self.server, proven),
            Err(_) => {
                end_stream(&self.server, xs, ConnError::Stream(StreamError::UndefinedCondition)).await;
                return false;
            }
        }
        let id = sm.resume_id.clone().unwrap_or_default();
        let resumed = elem("resumed", NS_SM).with("h", sm.h_in.to_string()).with("previd", id);
        match success {
            Some(mut s) => {
                s.append_child(super::sasl2::authorization_identifier(self.me.jid.as_str()));
                s.append_child(resumed);
                xs.queue(&s);
            }
            None => xs.queue(&resumed),
        }
        for s in &sm.unacked {
            xs.queue(&s.el);
        }
        sm.ack_pending = false;
        self.csi = Csi::default();
        if !sm.unacked.is_empty() {
            xs.queue(&elem("r", NS_SM));
            sm.ack_pending = true;
        }
        tracing::info!(retransmitted = sm.unacked.len(), "session resumed");
        xs.flush().await.is_ok()
    }

    /// Wait for a resumption, queueing stanzas meanwhile. `None`: timed out or stopping.
    async fn hibernate(&mut self) -> Option<Box<ResumeRequest>> {
        let timeout = tokio::time::sleep(self.server.config.limits.hibernation_timeout.get());
        tokio::pin!(timeout);
        let mut stop = self.server.shutdown.clone();
        self.me.hibernating.store(true, std::sync::atomic::Ordering::Relaxed);
        self.keep_unacked().await;
        let r = loop {
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some(ToSession::Stanza(el)) => {
                        let el = *el;
                        // Kept in the offline table while the client sleeps.
                        let bare = self.me.jid.to_bare();
                        let id = match el.name() == "message" && offline::worth_storing(&el) {
                            true => offline::keep_for(&self.server, &bare, vec![el.clone()]).await.pop().flatten(),
                            false => None,
                        };
                        self.record_sent(el, id)
                    }
                    Some(ToSession::Stored(el, id)) => self.record_sent(*el, Some(id)),
                    Some(ToSession::Resume(req)) => break Some(req),
                    Some(ToSession::Replaced) | None => break None,
                },
                _ = &mut timeout => {
                    tracing::info!("hibernation timed out");
                    break None;
                }
                _ = stopped(&mut stop) => break None,
            }
        };
        self.me.hibernating.store(false, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Write the unacknowledged messages that are only in memory to the
    /// offline table, so that a crash while the client sleeps loses none.
    async fn keep_unacked(&mut self) {
        let Some(sm) = self.sm.as_mut() else { return };
        let idx: Vec<usize> = (0..sm.unacked.len())
            .filter(|&i| sm.unacked[i].stored.is_none() && sm.unacked[i].el.name() == "message")
            .collect();
        if idx.is_empty() {
            return;
        }
        let msgs = idx.iter().map(|&i| sm.unacked[i].el.clone()).collect();
        let ids = offline::keep_for(&self.server, &self.me.jid.to_bare(), msgs).await;
        let Some(sm) = self.sm.as_mut() else { return };
        for (i, id) in idx.into_iter().zip(ids) {
            sm.unacked[i].stored = id;
        }
    }

    /// Count a stanza as sent to the client (it is in the unacked queue).
    fn record_sent(&mut self, el: Element, stored: Option<i64>) {
        match self.sm.as_mut() {
            Some(sm) => {
                sm.out = sm.out.wrapping_add(1);
                sm.unacked.push_back(Sent { el, stored });
                if sm.unacked.len() > SM_MAX_UNACKED {
                    // Keep memory bounded: the oldest go back to the router as undeliverable here.
                    if let Some(old) = sm.unacked.pop_front() {
                        tracing::warn!("unacknowledged queue full; the oldest stanza is stored instead");
                        let server = self.server.clone();
                        let bare = self.me.jid.to_bare();
                        tokio::spawn(async move {
                            match old.stored {
                                // Already in the offline table: it stays there.
                                Some(id) => offline::unproven(&server, &bare, vec![id]).await,
                                None => router::store_undelivered(&server, old.el, &bare).await,
                            }
                        });
                    }
                }
            }
            None => self.proof.unproven.extend(stored),
        }
    }

    /// The session is over: unregister, announce unavailable, and make sure
    /// nothing the client did not acknowledge is lost.
    async fn finish(mut self) {
        let server = self.server.clone();
        server.sessions.unbind(&self.me.jid, self.me.id);
        self.rx.close();
        // Stanzas that raced into the channel are undelivered too.
        let mut pending: Vec<Sent> = self
            .sm
            .take()
            .map(|s| s.unacked.into_iter().collect())
            .unwrap_or_default();
        pending.extend(
            std::mem::take(&mut self.csi.held)
                .into_iter()
                .map(|(el, stored)| Sent { el, stored }),
        );
        while let Some(m) = self.rx.try_recv() {
            match m {
                ToSession::Stanza(el) => pending.push(Sent { el: *el, stored: None }),
                ToSession::Stored(el, id) => pending.push(Sent {
                    el: *el,
                    stored: Some(id),
                }),
                _ => {}
            }
        }
        // Offline rows this session never proved delivered stay stored.
        let mut unproven = std::mem::take(&mut self.proof.unproven);
        if let Some((_, ids)) = self.proof.pending.take() {
            unproven.extend(ids);
        }
        if self.me.available() {
            let p = elem("presence", NS_CLIENT)
                .with("type", "unavailable")
                .with("from", self.me.jid.to_string());
            presence::broadcast(&server, &self.me, p, false).await;
        }
        let bare = self.me.jid.to_bare();
        let mut rerouted = 0;
        for s in pending {
            match s.stored {
                Some(id) => unproven.push(id),
                None if s.el.name() == "message" => {
                    rerouted += 1;
                    router::store_undelivered(&server, s.el, &bare).await;
                }
                None => {}
            }
        }
        offline::unproven(&server, &bare, unproven).await;
        if rerouted > 0 {
            tracing::info!(rerouted, "unacknowledged messages redelivered or stored");
        }
    }

    async fn serve(&mut self, xs: &mut ClientStream) -> End {
        let idle = self.server.config.limits.idle_timeout.get();
        let mut shutdown = self.server.shutdown.clone();
        // Both live across iterations: made anew for each stanza, the stop
        // signal's future would register with the daemon-wide channel (a
        // lock every session shares) and the timer go in and out of the
        // timer wheel.
        let stop = stopped(&mut shutdown);
        tokio::pin!(stop);
        let mut last_activity = Instant::now();
        let timer_sleep = tokio::time::sleep_until(last_activity + idle);
        tokio::pin!(timer_sleep);
        let mut armed = None;
        loop {
            // One timer: the idle timeout, or earlier, the moment a quiet
            // stream frees its parser (which does not count as activity).
            let deadline = last_activity + idle;
            let wake = match xs.can_rest() {
                true => deadline.min(last_activity + REST_AFTER),
                false => deadline,
            };
            // Re-armed only when it must fire earlier than it is set to, or
            // after it fired: activity moves `wake` later, and a timer that
            // fires before it only re-arms (below), about once a second
            // under traffic instead of once per stanza.
            if armed.is_none_or(|a| wake < a) {
                timer_sleep.as_mut().reset(wake);
                armed = Some(wake);
            }
            // Timers firing are not activity; everything else is.
            let mut timer = false;
            let r: Result<Option<End>, ConnError> = tokio::select! {
                ev = xs.next_event() => match ev {
                    // Boxed: inline, the handler's state would be part of
                    // every idle session's task (one allocation per stanza).
                    Ok(Event::Stanza(el)) => Box::pin(self.handle_client_element(xs, el)).await,
                    Ok(Event::Close) => Ok(Some(End::Closed)),
                    Ok(Event::Header(_)) => Err(ConnError::Stream(StreamError::NotWellFormed)),
                    Err(e) => Err(e),
                },
                msg = self.rx.recv() => self.deliver(xs, msg).await,
                _ = &mut stop => Ok(Some(End::Shutdown)),
                _ = &mut timer_sleep => {
                    timer = true;
                    armed = None;
                    if Instant::now() < wake {
                        // Armed for an earlier `wake`: activity since moved it.
                        Ok(None)
                    } else if wake < deadline {
                        xs.rest();
                        Ok(None)
                    } else {
                        match heard(xs).filter(|t| *t > last_activity) {
                            // A whitespace keepalive or a WebSocket ping
                            // (read without an event) restarts the count.
                            Some(t) => {
                                last_activity = t;
                                Ok(None)
                            }
                            None => Err(ConnError::Timeout),
                        }
                    }
                },
            };
            if !timer {
                last_activity = Instant::now();
            }
            match r {
                Ok(None) => {}
                Ok(Some(end)) => return end,
                Err(e @ (ConnError::Io(_) | ConnError::Eof | ConnError::Timeout)) => return End::Lost(e),
                Err(e) => return End::Fatal(e),
            }
            xs.shrink();
        }
    }

    /// Write what the router sent (and everything queued behind it).
    async fn deliver(&mut self, xs: &mut ClientStream, first: Option<ToSession>) -> Result<Option<End>, ConnError> {
        let mut next = first;
        let mut wrote = false;
        loop {
            match next {
                Some(ToSession::Stanza(el)) => wrote |= self.deliver_one(xs, *el, None),
                Some(ToSession::Stored(el, id)) => wrote |= self.deliver_one(xs, *el, Some(id)),
                Some(ToSession::Replaced) => {
                    xs.flush().await?;
                    return Err(ConnError::Stream(StreamError::Conflict));
                }
                Some(ToSession::Resume(req)) => {
                    xs.flush().await.ok();
                    return Ok(Some(End::Resumed(req)));
                }
                None => return Ok(Some(End::Fatal(ConnError::Stream(StreamError::InternalServerError)))),
            }
            next = match self.rx.try_recv() {
                Some(m) => Some(m),
                None => break,
            };
        }
        if wrote {
            if let Some(sm) = self.sm.as_mut() {
                if !sm.ack_pending && !sm.unacked.is_empty() {
                    xs.queue(&elem("r", NS_SM));
                    sm.ack_pending = true;
                }
            }
        }
        self.ask_for_proof(xs);
        xs.flush().await?;
        Ok(None)
    }

    /// Write one stanza, or hold it while the client is inactive (CSI).
    /// Returns whether something was written.
    fn deliver_one(&mut self, xs: &mut ClientStream, el: Element, stored: Option<i64>) -> bool {
        if self.csi.inactive && !important(&el) {
            self.hold(el, stored);
            if self.csi.held.len() > CSI_MAX_HELD {
                // Bounded memory: an overfull hold is flushed at once.
                for (h, id) in std::mem::take(&mut self.csi.held) {
                    self.write(xs, h, id);
                }
                return true;
            }
            return false;
        }
        if self.csi.inactive && el.name() == "message" {
            // An important message: flush what was held first, in order.
            for (h, id) in std::mem::take(&mut self.csi.held) {
                self.write(xs, h, id);
            }
        }
        self.write(xs, el, stored);
        true
    }

    fn write(&mut self, xs: &mut ClientStream, el: Element, stored: Option<i64>) {
        xs.queue(&el);
        self.record_sent(el, stored);
    }

    /// Without stream management, offline rows written since the last proof
    /// are proven delivered by the answer to a ping sent after them.
    fn ask_for_proof(&mut self, xs: &mut ClientStream) {
        if self.sm.is_some() || self.proof.pending.is_some() || self.proof.unproven.is_empty() {
            return;
        }
        let id = format!("offline-{}", new_id());
        xs.queue(
            &elem("iq", NS_CLIENT)
                .with("type", "get")
                .with("id", id.clone())
                .with("from", self.server.domain().to_string())
                .with("to", self.me.jid.to_string())
                .child(elem("ping", "urn:xmpp:ping")),
        );
        self.proof.pending = Some((id, std::mem::take(&mut self.proof.unproven)));
    }

    /// CSI: keep only the latest presence per sender, and chat states.
    fn hold(&mut self, el: Element, stored: Option<i64>) {
        if el.name() == "presence" {
            let from = el.attr("from").map(str::to_string);
            self.csi
                .held
                .retain(|(h, _)| h.name() != "presence" || h.attr("from").map(str::to_string) != from);
        }
        self.csi.held.push((el, stored));
    }

    /// Handle one element from the client.
    async fn handle_client_element(
        &mut self,
        xs: &mut ClientStream,
        mut el: Element,
    ) -> Result<Option<End>, ConnError> {
        if el.has_ns(NS_SM) {
            return self.sm_nonza(xs, &el).await.map(|_| None);
        }
        if el.has_ns(NS_CSI) {
            match el.name() {
                "inactive" => self.csi.inactive = true,
                "active" => {
                    self.csi.inactive = false;
                    for (h, id) in std::mem::take(&mut self.csi.held) {
                        self.write(xs, h, id);
                    }
                    self.ask_for_proof(xs);
                    xs.flush().await?;
                }
                _ => return Err(ConnError::Stream(StreamError::UnsupportedStanzaType)),
            }
            self.me.set_inactive(self.csi.inactive);
            return Ok(None);
        }
        let Some(kind) = Kind::of(&el) else {
            tracing::info!(name = el.name(), ns = %el.ns(), "unsupported top-level element");
            return Err(ConnError::Stream(StreamError::UnsupportedStanzaType));
        };
        if let Some(sm) = self.sm.as_mut() {
            sm.h_in = sm.h_in.wrapping_add(1);
        }
        let me = &self.me;
        if let Some(f) = xml::attr(&el, "from") {
            let ok = f == me.jid.as_str() || jid::Jid::new(f).is_ok_and(|j| j == me.jid.to_bare() || j == me.jid);
            if !ok {
                return Err(ConnError::Stream(StreamError::InvalidFrom));
            }
        }
        if kind == Kind::Iq && matches!(xml::attr(&el, "type"), Some("result" | "error")) {
            let answers_proof = self
                .proof
                .pending
                .as_ref()
                .is_some_and(|(id, _)| el.attr("id") == Some(id.as_str()));
            if answers_proof {
                // The client read everything written before the ping.
                if let Some((_, ids)) = self.proof.pending.take() {
                    offline::delivered(&self.server, ids);
                }
                self.ask_for_proof(xs);
                xs.flush().await?;
                return Ok(None);
            }
        }
        el.set("from", me.jid.as_str());
        let server = &self.server;
        match kind {
            // Boxed: presence handling is large and rarer than messages.
            Kind::Presence => Box::pin(presence::outbound(server, me, el)).await,
            Kind::Iq
                if el.get_child("session", NS_SESSION).is_some()
                    && el.attr("to").is_none_or(|t| server.is_local(t)) =>
            {
                // RFC 3921 session establishment: a no-op kept for old clients.
                let mut r = iq_result(&el, None);
                r.unset("from");
                me.send(r);
            }
            Kind::Message => {
                // The addresses are parsed once, here, for every hook and
                // the router (and the archive's serialisation travels with
                // the message to the recipient's archive).
                match Stanza::from_sender(el, kind, me.jid.clone().into()) {
                    Ok(mut msg) => {
                        server.modules.message_out(server, me, &mut msg);
                        router::route_stanza(server, msg).await
                    }
                    Err(e) => router::unroutable(server, e).await,
                }
            }
            Kind::Iq => route(server, el).await,
        }
        Ok(None)
    }

    async fn sm_nonza(&mut self, xs: &mut ClientStream, el: &Element) -> Result<(), ConnError> {
        match el.name() {
            "enable" => {
                let answer = self.enable_sm(el);
                xs.send(&answer).await?;
            }
            "r" => {
                let Some(sm) = self.sm.as_ref() else {
                    return Err(ConnError::Stream(StreamError::UnsupportedStanzaType));
                };
                xs.send(&elem("a", NS_SM).with("h", sm.h_in.to_string())).await?;
            }
            "a" => {
                let Some(sm) = self.sm.as_mut() else {
                    return Err(ConnError::Stream(StreamError::UnsupportedStanzaType));
                };
                let h = el
                    .attr("h")
                    .and_then(|h| h.parse::<u32>().ok())
                    .ok_or(ConnError::Stream(StreamError::BadFormat))?;
                let proven = sm.ack(h).map_err(ConnError::Stream)?;
                sm.ack_pending = false;
                offline::delivered(&self.server, proven);
            }
            "resume" => {
                // Resumption happens before binding; on a bound stream it is out of place.
                xs.send(&failed("unexpected-request")).await?;
            }
            _ => return Err(ConnError::Stream(StreamError::UnsupportedStanzaType)),
        }
        Ok(())
    }
}

/// `<failed/>` with a stanza error condition.
pub fn failed(condition: &str) -> Element {
    elem("failed", NS_SM).child(elem(condition, crate::xmpp::xml::NS_STANZAS))
}

/// Whether a stanza must reach an inactive (CSI) client at once.
fn important(el: &Element) -> bool {
    match el.name() {
        "message" => el.children().any(|c| {
            matches!(
                c.name(),
                "body" | "subject" | "encrypted" | "propose" | "received" | "sent" | "result"
            ) || c.has_ns("urn:xmpp:jingle-message:0")
        }),
        "presence" => matches!(
            el.attr("type"),
            Some("subscribe" | "subscribed" | "unsubscribe" | "unsubscribed" | "error")
        ),
        _ => true, // IQs always go through
    }
}

/// When the client last showed it is there without sending an element:
/// whitespace between stanzas, or a WebSocket ping or pong.
fn heard(xs: &ClientStream) -> Option<Instant> {
    xs.heard().max(xs.get_ref().heard())
}

async fn end_stream(server: &Server, xs: &mut ClientStream, e: ConnError) {
    end(server, xs, e).await
}

/// The size of the state machines a connection's task holds for its whole
/// life (see "Where the bytes of an idle session go" in docs/benchmarks.md):
/// printed with `cargo test --lib future_sizes -- --nocapture`, and kept
/// under a budget so that a large future creeping back in is noticed.
#[cfg(test)]
mod future_sizes {
    use super::*;
    use std::mem::size_of;

    /// The size of what `f` returns (its future), without calling it.
    fn ret<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        size_of::<R>()
    }
    fn ret2<'a, A: 'a, B: 'a, R>(_: impl FnOnce(&'a mut A, &'a mut B) -> R) -> usize {
        size_of::<R>()
    }
    fn ret_owned<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        size_of::<R>()
    }
    fn ret4<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
        size_of::<R>()
    }

    fn ret3m<'a, A: 'a, B: 'a, C, R>(_: impl FnOnce(&'a mut A, &'a mut B, C) -> R) -> usize {
        size_of::<R>()
    }

    /// The size of the task the accept loop spawns for a connection served
    /// by `serve` (see `net::connection_task`).
    fn spawned<A, B, C, Fut: std::future::Future<Output = ()>>(_: impl FnOnce(A, B, C) -> Fut) -> usize {
        fn r<F, G, H, R>(_: impl FnOnce(F, G, H) -> R) -> usize {
            size_of::<R>()
        }
        r(crate::net::connection_task::<Fut>)
    }

    #[test]
    fn idle_session_futures_stay_small() {
        let task = spawned(super::super::serve_starttls);
        let rows = [
            ("spawned task (STARTTLS)", task),
            ("c2s::serve_starttls", ret(super::super::serve_starttls)),
            ("c2s::serve_direct_tls", ret(super::super::serve_direct_tls)),
            ("c2s::negotiate", ret4(super::super::negotiate)),
            ("Session::run", ret_owned(Session::run)),
            ("Session::serve", ret2(Session::serve)),
            ("Session::handle_client_element", ret3m(Session::handle_client_element)),
            ("Session::deliver", ret3m(Session::deliver)),
            ("XmlStream::next_event", {
                fn f<'a, R>(_: impl FnOnce(&'a mut ClientStream) -> R) -> usize {
                    size_of::<R>()
                }
                f(ClientStream::next_event)
            }),
            ("tokio Sleep", size_of::<tokio::time::Sleep>()),
            ("ClientStream (boxed)", size_of::<ClientStream>()),
            ("Tls (net::tls::TlsStream)", size_of::<super::super::Tls>()),
            ("Session", size_of::<Session>()),
            ("ToSession", size_of::<ToSession>()),
        ];
        for (name, size) in rows {
            eprintln!("{name:32} {size:>7} bytes");
        }
        assert!(task <= 3072, "the connection task's future grew to {task} bytes");
    }
}
