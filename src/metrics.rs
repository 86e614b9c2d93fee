//! Prometheus metrics: the metric names and one-line recording helpers. A
//! leaf: it imports nothing of pushbox. The `GET /metrics` endpoint on
//! `[metrics] listen` is `http::metrics`.
//!
//! Recording goes through the `metrics` facade, so any module can count with
//! one line and no handle:
//!
//! ```text
//! metrics::counter!(crate::metrics::PUSHES, "provider" => "apns", "outcome" => "delivered").increment(1);
//! ```
//!
//! Names (all prefixed `pushbox_`; see `docs/operations.md` for the list):
//! counters end in `_total`; gauges that describe state (sessions, database
//! size, certificate expiry) are computed when scraped.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Counter: accepted TCP connections, label `kind` (`c2s_starttls`, `c2s_direct_tls`, later `s2s_*`, `https`).
pub const CONNECTIONS: &str = "pushbox_connections_total";
/// Counter: stanzas through the router, label `kind` (`message`, `presence`, `iq`).
pub const STANZAS_ROUTED: &str = "pushbox_stanzas_routed_total";
/// Counter: SASL outcomes, label `result` (`ok`, `failed`).
pub const LOGINS: &str = "pushbox_logins_total";
/// Gauge: bound client sessions.
pub const SESSIONS_ONLINE: &str = "pushbox_sessions_online";
pub const MUC_ROOMS: &str = "pushbox_muc_rooms_active";
pub const MUC_OCCUPANTS: &str = "pushbox_muc_occupants";
/// Gauge: bytes of the SQLite database, its WAL included.
pub const DATABASE_SIZE: &str = "pushbox_database_size_bytes";
/// Gauge: certificate `notAfter` as Unix seconds, label `name`.
pub const CERT_EXPIRY: &str = "pushbox_certificate_expiry_timestamp_seconds";
/// Counter (relay): pushes, labels `provider` (`apns`, `fcm`, `webpush`) and
/// `outcome` (`accepted`, `delivered`, `retried`, `failed`, `pruned`).
pub const PUSHES: &str = "pushbox_pushes_total";
/// Gauge (relay): pushes waiting in the outbox.
pub const OUTBOX_DEPTH: &str = "pushbox_outbox_depth";
/// Gauge (relay): age in seconds of the oldest push in the outbox.
pub const OUTBOX_OLDEST_AGE: &str = "pushbox_outbox_oldest_age_seconds";
/// Gauge (federation): s2s streams, labels `direction` (`in`, `out`) and `state`.
pub const S2S_STREAMS: &str = "pushbox_s2s_streams";

/// The process-wide recorder, installed on first use. Installing is global
/// (one per process), so in-process tests running several daemons share it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(CONNECTIONS, "Accepted TCP connections by listener kind.");
    describe_counter!(STANZAS_ROUTED, "Stanzas routed, by stanza kind.");
    describe_counter!(LOGINS, "SASL authentications by result.");
    describe_gauge!(SESSIONS_ONLINE, "Bound client sessions.");
    describe_gauge!(MUC_ROOMS, "Group chat rooms with someone in them.");
    describe_gauge!(MUC_OCCUPANTS, "Occupants of group chat rooms.");
    describe_gauge!(DATABASE_SIZE, Unit::Bytes, "Size of the SQLite database and its WAL.");
    describe_gauge!(
        CERT_EXPIRY,
        Unit::Seconds,
        "Certificate notAfter, Unix seconds, per name."
    );
}

/// Count an accepted connection.
pub fn connection(kind: &'static str) {
    metrics::counter!(CONNECTIONS, "kind" => kind).increment(1);
}

/// Count a routed stanza of `kind` (`message`, `presence`, `iq`).
pub fn stanza_routed(kind: &'static str) {
    metrics::counter!(STANZAS_ROUTED, "kind" => kind).increment(1);
}

/// Set the gauge of bound client sessions.
pub fn sessions_online(n: usize) {
    metrics::gauge!(SESSIONS_ONLINE).set(n as f64);
}

/// Set the gauge of group chat rooms in memory (rooms with someone in them).
pub fn muc_rooms_active(n: usize) {
    metrics::gauge!(MUC_ROOMS).set(n as f64);
}

/// Set the gauge of occupants over all rooms.
pub fn muc_occupants(n: usize) {
    metrics::gauge!(MUC_OCCUPANTS).set(n as f64);
}

/// Count a SASL outcome.
pub fn login(ok: bool) {
    metrics::counter!(LOGINS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}
