//! Typed configuration: built-in defaults, then `pushbox.toml`, then
//! `PUSHBOX_<SECTION>__<KEY>` environment variables, checked once with every
//! problem reported together (file and key named).

mod component;
mod duration;
pub mod relay;

pub use component::Component;
pub use duration::Duration;
pub use relay::RelayConfig;

use figment::{
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Value},
    Figment, Provider,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// The whole configuration. Field doc comments are mirrored in
/// `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The XMPP domain this server hosts (the part after `@`).
    pub domain: String,
    /// Where the database, generated keys and uploads live. Relative paths
    /// are relative to the directory of the configuration file.
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub tls: Tls,
    pub registration: Registration,
    pub federation: Federation,
    pub relay: RelayConfig,
    pub limits: Limits,
    pub log: Log,
    pub metrics: Metrics,
    pub contact: Contact,
    pub archive: Archive,
    pub push: Push,
    pub upload: Upload,
    pub muc: Muc,
    pub websocket: WebSocket,
    /// STUN/TURN servers announced with XEP-0215; unset announces none.
    pub turn: Option<Turn>,
    /// External components (XEP-0114) by domain.
    pub components: BTreeMap<String, Component>,
    /// Where this configuration came from (not a key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: "data".into(),
            listen: Listen::default(),
            tls: Tls::default(),
            registration: Registration::default(),
            federation: Federation::default(),
            relay: RelayConfig::default(),
            limits: Limits::default(),
            log: Log::default(),
            metrics: Metrics::default(),
            contact: Contact::default(),
            archive: Archive::default(),
            push: Push::default(),
            upload: Upload::default(),
            muc: Muc::default(),
            websocket: WebSocket::default(),
            turn: None,
            components: BTreeMap::new(),
            source: None,
        }
    }
}

/// Listening sockets. A list set to `[]` turns that listener off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Client connections with mandatory STARTTLS (RFC 6120), usually port 5222.
    pub c2s: Vec<SocketAddr>,
    /// Client connections with direct TLS (XEP-0368), usually port 5223.
    pub c2s_direct_tls: Vec<SocketAddr>,
    /// Server-to-server with STARTTLS, usually port 5269.
    pub s2s: Vec<SocketAddr>,
    /// Server-to-server with direct TLS, usually port 5270.
    pub s2s_direct_tls: Vec<SocketAddr>,
    /// HTTPS: the push relay API, uploads, invite pages; 443 in production.
    pub https: Vec<SocketAddr>,
    /// Plain HTTP, used only for ACME HTTP-01 challenges and redirects; 80 in production.
    pub http: Vec<SocketAddr>,
    /// External components (XEP-0114, plain TCP: keep it on loopback or a
    /// private network), usually port 5347. Bound only when
    /// `[components]` names one.
    pub component: Vec<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        let a = |s: &str| vec![s.parse().expect("valid default address")];
        Listen {
            c2s: a("127.0.0.1:5222"),
            c2s_direct_tls: a("127.0.0.1:5223"),
            s2s: vec![],
            s2s_direct_tls: vec![],
            https: a("127.0.0.1:5443"),
            http: vec![],
            component: a("127.0.0.1:5347"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// A local CA and a certificate for the domain, generated once and kept in `data_dir/tls`.
    SelfSigned,
    /// PEM files named by `tls.cert` and `tls.key`, reloaded on SIGHUP.
    Files,
    /// Certificates from an ACME CA (Let's Encrypt).
    Acme,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub mode: TlsMode,
    /// PEM certificate chain (mode `files`).
    pub cert: Option<PathBuf>,
    /// PEM private key (mode `files`).
    pub key: Option<PathBuf>,
    pub acme: Acme,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            mode: TlsMode::SelfSigned,
            cert: None,
            key: None,
            acme: Acme::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcmeChallenge {
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Acme {
    /// `mailto:` URL the CA may write to about expiring certificates.
    pub contact: Option<String>,
    /// `letsencrypt`, `letsencrypt-staging`, or a directory URL.
    pub directory: String,
    /// Extra PEM roots to trust when talking to a private ACME server.
    pub ca_roots: Option<PathBuf>,
    pub challenge: AcmeChallenge,
}

impl Default for Acme {
    fn default() -> Self {
        Acme {
            contact: None,
            directory: "letsencrypt".into(),
            ca_roots: None,
            challenge: AcmeChallenge::TlsAlpn01,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationMode {
    /// Accounts are made only with `pushbox user add`.
    #[default]
    Closed,
    /// Anyone may register in-band (XEP-0077).
    Open,
    /// Registration needs a token from `pushbox invite create` (XEP-0445).
    Invite,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    pub mode: RegistrationMode,
    /// Whether a user's contact invitation (ad-hoc `urn:xmpp:invite#invite`)
    /// may also create an account (as Prosody's `allow_user_invites`).
    /// Without it the invitation only makes the two accounts contacts.
    pub user_invites: bool,
    /// Whether every user, not only administrators, may run the ad-hoc
    /// command `urn:xmpp:invite#create-account`.
    pub user_account_invites: bool,
    /// Most unused, unexpired invitations one (non-administrator) user may
    /// hold; creating one more is refused until one is used or expires.
    pub invites_per_user: u32,
    /// How long an invitation made with an ad-hoc command stays valid.
    pub invite_expiry: Duration,
}

impl Default for Registration {
    fn default() -> Self {
        Registration {
            mode: RegistrationMode::default(),
            user_invites: true,
            user_account_invites: false,
            invites_per_user: 5,
            invite_expiry: Duration::from_secs(7 * 86400),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Federation {
    /// Serve `listen.s2s` / `listen.s2s_direct_tls` and connect to other servers.
    pub enabled: bool,
    /// DNS servers (`"ip:port"`) for SRV look-ups; empty uses the system's.
    pub dns_servers: Vec<SocketAddr>,
    /// When false, dialback is accepted with peers whose certificates do not
    /// verify. Unset: true, except for the domain `localhost`.
    pub require_valid_certificates: Option<bool>,
    /// Static `"domain" = "host:port"` overrides of DNS.
    pub hosts: BTreeMap<String, String>,
    /// Extra PEM roots trusted for peers' certificates, besides the system's.
    pub ca_roots: Option<PathBuf>,
    /// Time an outgoing stream has to connect and authenticate; stanzas
    /// queued for it are bounced after this.
    pub connect_timeout: Duration,
    /// An outgoing stream that carried nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Largest stanza accepted from a server, in bytes.
    pub max_stanza_size: usize,
    /// Incoming streams one remote domain may hold open at once.
    pub max_streams_per_domain: u32,
}

impl Default for Federation {
    fn default() -> Self {
        Federation {
            enabled: false,
            dns_servers: vec![],
            require_valid_certificates: None,
            hosts: BTreeMap::new(),
            ca_roots: None,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_stanza_size: 512 * 1024,
            max_streams_per_domain: 8,
        }
    }
}

/// Protections against abusive or broken peers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest stanza accepted from a client, in bytes.
    pub max_stanza_size: usize,
    /// Deepest element nesting inside a stanza.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Time a new connection has to finish authentication (on the HTTPS
    /// listener: to send a complete request head).
    pub auth_timeout: Duration,
    /// Failed authentication attempts allowed on one connection before it is closed.
    pub max_auth_failures: u32,
    /// Failed logins allowed from one IP address per minute before further attempts are refused.
    pub max_auth_failures_per_ip: u32,
    /// New connections accepted from one IP address per minute.
    pub connections_per_ip_per_minute: u32,
    /// Open connections allowed from one IP address.
    pub max_connections_per_ip: u32,
    /// A connection that sends nothing (not even a whitespace keepalive or a
    /// WebSocket ping) for this long is closed.
    pub idle_timeout: Duration,
    /// Offline messages kept per account.
    pub max_offline_messages: u32,
    /// How long a session whose connection was lost waits for the client to
    /// resume it (XEP-0198) before its unacknowledged messages go offline.
    pub hibernation_timeout: Duration,
    /// How long a FAST token (XEP-0484) stays valid; `"0s"` turns FAST off.
    /// A token used in its second half is replaced by a new one.
    pub fast_token_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_size: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
            auth_timeout: Duration::from_secs(30),
            max_auth_failures: 3,
            max_auth_failures_per_ip: 20,
            connections_per_ip_per_minute: 120,
            max_connections_per_ip: 1000,
            idle_timeout: Duration::from_secs(600),
            max_offline_messages: 1000,
            hibernation_timeout: Duration::from_secs(3600),
            fast_token_lifetime: Duration::from_secs(21 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A tracing filter such as `info` or `pushbox=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Where Prometheus metrics are served (`/metrics`); `[]` is off.
    pub listen: Vec<SocketAddr>,
}

/// Contact addresses published with XEP-0157 (URIs such as `mailto:` or `xmpp:`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Contact {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub security: Vec<String>,
    pub support: Vec<String>,
}

/// `[archive]`: the XEP-0313 message archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Archive {
    /// How long archived messages are kept; unset keeps them forever.
    pub retention: Option<Duration>,
}

impl Default for Archive {
    fn default() -> Self {
        Archive {
            retention: Some(Duration::from_secs(30 * 86400)),
        }
    }
}

/// `[push]`: XEP-0357 notifications this server sends to app servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Push {
    /// Include the sender's bare JID (`last-message-sender`) in notifications.
    pub include_sender: bool,
    /// Include the message text (`last-message-body`); otherwise a fixed text marks important pushes.
    pub include_body: bool,
    /// Most app-server registrations per account.
    pub max_registrations: u32,
    /// Failed publishes in a row after which a registration is removed.
    pub max_failures: u32,
}

impl Default for Push {
    fn default() -> Self {
        Push {
            include_sender: false,
            include_body: false,
            max_registrations: 10,
            max_failures: 5,
        }
    }
}

/// `[upload]`: XEP-0363 HTTP file upload at `upload.<domain>`, served on the https listeners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upload {
    pub enabled: bool,
    /// Largest file, in bytes (encrypted files may be 16 bytes larger for the AES-GCM tag).
    pub max_file_size: u64,
    /// Total bytes one account may have stored.
    pub quota: u64,
    /// Files are deleted this long after upload.
    pub expire_after: Duration,
}

impl Default for Upload {
    fn default() -> Self {
        Upload {
            enabled: true,
            max_file_size: 50 * 1024 * 1024,
            quota: 1024 * 1024 * 1024,
            expire_after: Duration::from_secs(30 * 86400),
        }
    }
}

/// `[websocket]`: XMPP over WebSocket (RFC 7395) on the HTTPS listeners,
/// announced by XEP-0156 host-meta.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocket {
    pub enabled: bool,
    /// The `wss://` URL clients should use; unset means `/xmpp-websocket` on
    /// the scheme, host and port of [`Config::public_url`].
    pub public_url: Option<String>,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            enabled: true,
            public_url: None,
        }
    }
}

/// Where the WebSocket endpoint is served on the HTTPS listeners.
pub const WEBSOCKET_PATH: &str = "/xmpp-websocket";

/// `[muc]`: group chat (XEP-0045), a room service on its own domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Muc {
    pub enabled: bool,
    /// The service's domain; unset means `groups.<domain>` (the name Snikket uses).
    pub domain: Option<String>,
    /// Who may create rooms: accounts of this server (`local`), its
    /// administrators (`admins`), or anyone, other servers' users included.
    pub restrict_room_creation: RoomCreation,
    /// Most occupants in one room (a room's own `maxusers` is capped by this).
    pub max_occupants: u32,
    /// Most rooms one account may own.
    pub max_rooms_per_user: u32,
    /// Most messages of history sent to someone joining (a room's own
    /// history length is capped by this).
    pub max_history: u32,
    /// Members of members-only rooms get a push for every message in rooms
    /// with up to this many members; in larger rooms only for messages that
    /// mention their nick.
    pub push_every_message_up_to: u32,
}

impl Default for Muc {
    fn default() -> Self {
        Muc {
            enabled: true,
            domain: None,
            restrict_room_creation: RoomCreation::Local,
            max_occupants: 200,
            max_rooms_per_user: 50,
            max_history: 50,
            push_every_message_up_to: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RoomCreation {
    /// Accounts of this server.
    #[default]
    Local,
    /// Administrators of this server only.
    Admins,
    /// Anyone, other servers' users included.
    Anyone,
}

/// Where the STUN/TURN server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TurnMode {
    /// Another server (such as coturn with `use-auth-secret`) at `host`.
    #[default]
    External,
    /// pushbox itself serves STUN and TURN (RFC 8489, RFC 8656).
    Builtin,
}

/// `[turn]`: the STUN/TURN server announced with XEP-0215, external or built in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    #[serde(default)]
    pub mode: TurnMode,
    /// Host name clients connect to (mode `builtin`: defaults to the domain).
    #[serde(default)]
    pub host: String,
    /// STUN/TURN port (UDP and TCP).
    #[serde(default = "default_turn_port")]
    pub port: u16,
    /// TURN over TLS port. Mode `external`: announced if set. Mode
    /// `builtin`: unset means 5349, `0` means no TLS listener.
    #[serde(default)]
    pub tls_port: Option<u16>,
    /// Transports offered for TURN.
    #[serde(default = "default_turn_transports")]
    pub transports: Vec<String>,
    /// The secret credentials are made from (coturn `static-auth-secret`).
    /// Mode `builtin`: unset generates one in `data_dir/turn/secret`.
    #[serde(default)]
    pub secret: String,
    /// How long handed-out credentials stay valid.
    #[serde(default = "default_turn_ttl")]
    pub ttl: Duration,
    /// Mode `builtin`: addresses to listen on (UDP and TCP on `port`, TLS on
    /// `tls_port`); relayed sockets bind to the first of each family.
    #[serde(default = "default_turn_bind")]
    pub bind: Vec<std::net::IpAddr>,
    /// Mode `builtin`: UDP ports for relayed addresses, `"low-high"`.
    #[serde(default = "default_relay_ports")]
    pub relay_ports: String,
    /// Mode `builtin`: the IPv4 address announced in relayed addresses
    /// (the public one, when the machine is behind NAT).
    #[serde(default)]
    pub public_ipv4: Option<std::net::Ipv4Addr>,
    /// Mode `builtin`: the IPv6 address announced in relayed addresses.
    #[serde(default)]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// Mode `builtin`: allocations one user may hold at once.
    #[serde(default = "default_allocations_per_user")]
    pub max_allocations_per_user: u32,
    /// Mode `builtin`: allocations one client IP address may hold at once.
    #[serde(default = "default_allocations_per_ip")]
    pub max_allocations_per_ip: u32,
    /// Mode `builtin`: allocations in all.
    #[serde(default = "default_allocations")]
    pub max_allocations: u32,
    /// Mode `builtin`: the longest lifetime a client may ask for at once
    /// (it refreshes before the end).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: Duration,
    /// Mode `builtin`: bytes per second one allocation may relay (both
    /// directions together); `0` is unlimited.
    #[serde(default = "default_bandwidth")]
    pub max_bandwidth: u64,
    /// Mode `builtin`: peer ranges (CIDR) relayed to although the built-in
    /// list refuses them (loopback, private, link-local…).
    #[serde(default)]
    pub allowed_peers: Vec<String>,
    /// Mode `builtin`: more peer ranges (CIDR) never relayed to.
    #[serde(default)]
    pub denied_peers: Vec<String>,
}

impl Turn {
    /// The host announced to clients.
    pub fn host_or<'a>(&'a self, domain: &'a str) -> &'a str {
        if self.host.is_empty() {
            domain
        } else {
            &self.host
        }
    }

    /// The TLS port, if TURN over TLS is offered.
    pub fn tls_port(&self) -> Option<u16> {
        match (self.mode, self.tls_port) {
            (_, Some(0)) => None,
            (TurnMode::Builtin, None) => Some(5349),
            (_, p) => p,
        }
    }

    /// `relay_ports` as an inclusive range.
    pub fn relay_port_range(&self) -> Option<(u16, u16)> {
        let (a, b) = self.relay_ports.split_once('-')?;
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a > 0 && a <= b).then_some((a, b))
    }

    fn validate(&self, report: &mut dyn FnMut(&str, String)) {
        let builtin = self.mode == TurnMode::Builtin;
        if !(builtin && self.secret.is_empty()) && self.secret.len() < 16 {
            report("turn.secret", "must be at least 16 characters".into());
        }
        if !builtin && self.host.is_empty() {
            report("turn.host", "is required when turn.mode = \"external\"".into());
        }
        for tr in &self.transports {
            if tr != "udp" && tr != "tcp" {
                report("turn.transports", format!("`{tr}` is not udp or tcp"));
            }
        }
        if !builtin {
            return;
        }
        if self.relay_port_range().is_none() {
            report(
                "turn.relay_ports",
                format!("`{}` is not \"low-high\" (e.g. \"49152-65535\")", self.relay_ports),
            );
        }
        if self.bind.is_empty() {
            report("turn.bind", "must name at least one address".into());
        }
        if self.max_lifetime.get() < std::time::Duration::from_secs(600) {
            report(
                "turn.max_lifetime",
                "must be at least 10m (the default lifetime of RFC 8656)".into(),
            );
        }
        for (key, list) in [
            ("turn.allowed_peers", &self.allowed_peers),
            ("turn.denied_peers", &self.denied_peers),
        ] {
            for n in list {
                if n.parse::<ipnet::IpNet>().is_err() {
                    report(key, format!("`{n}` is not a CIDR range (e.g. \"192.168.1.0/24\")"));
                }
            }
        }
    }
}

fn default_turn_port() -> u16 {
    3478
}
fn default_turn_transports() -> Vec<String> {
    vec!["udp".into(), "tcp".into()]
}
fn default_turn_ttl() -> Duration {
    Duration::from_secs(86400)
}
fn default_turn_bind() -> Vec<std::net::IpAddr> {
    vec![std::net::Ipv4Addr::UNSPECIFIED.into()]
}
fn default_relay_ports() -> String {
    "49152-65535".into()
}
fn default_allocations_per_user() -> u32 {
    10
}
fn default_allocations_per_ip() -> u32 {
    20
}
fn default_allocations() -> u32 {
    1000
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn default_bandwidth() -> u64 {
    1_000_000
}

/// Keys whose tables take free-form keys.
const OPEN_TABLES: &[&str] = &["federation.hosts", "components"];

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the value came from: a file path, or the environment variable.
    pub source: String,
    /// Dotted key, e.g. `tls.mode`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.source, self.key, self.message)
        }
    }
}

/// Every problem found, reported together.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration has {} problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Where to read the configuration from: `--config`, else `$PUSHBOX_CONFIG`,
/// else `./pushbox.toml`, else `/etc/pushbox/pushbox.toml`. `None` means no
/// file exists and the built-in defaults apply.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PUSHBOX_CONFIG") {
        return Some(PathBuf::from(p));
    }
    for p in ["pushbox.toml", "/etc/pushbox/pushbox.toml"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Parse `host:port` (`[v6]:port` for IPv6 literals); `None` when invalid.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let port: u16 = p.parse().ok().filter(|p| *p != 0)?;
    let h = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h);
    if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/') {
        return None;
    }
    Some((h.to_string(), port))
}

impl Federation {
    /// `[federation.hosts]` as typed values: lower-case domain → (host, port).
    /// Entries that do not parse are left out (`Config::load` refuses them).
    pub fn static_hosts(&self) -> BTreeMap<String, (String, u16)> {
        self.hosts
            .iter()
            .filter_map(|(d, hp)| Some((d.to_ascii_lowercase(), parse_host_port(hp)?)))
            .collect()
    }
}

impl Acme {
    /// The directory URL `directory` names (`letsencrypt`,
    /// `letsencrypt-staging`, or an https URL); `None` when it is not valid.
    pub fn directory_url(&self) -> Option<String> {
        use rustls_acme::acme::{LETS_ENCRYPT_PRODUCTION_DIRECTORY, LETS_ENCRYPT_STAGING_DIRECTORY};
        match self.directory.as_str() {
            "letsencrypt" => Some(LETS_ENCRYPT_PRODUCTION_DIRECTORY.into()),
            "letsencrypt-staging" => Some(LETS_ENCRYPT_STAGING_DIRECTORY.into()),
            u if u.starts_with("https://") && u.len() > "https://".len() && !u.contains(char::is_whitespace) => {
                Some(u.into())
            }
            _ => None,
        }
    }
}

impl Config {
    /// The group chat service's domain (`[muc] domain`, else `groups.<domain>`),
    /// `None` when group chat is off.
    pub fn muc_domain(&self) -> Option<String> {
        self.muc.enabled.then(|| {
            self.muc
                .domain
                .clone()
                .unwrap_or_else(|| format!("groups.{}", self.domain))
                .to_ascii_lowercase()
        })
    }

    /// The WebSocket URL announced in host-meta, `None` when WebSocket is
    /// off: `[websocket] public_url`, else `wss://` with the host and port
    /// of [`Config::public_url`].
    pub fn websocket_url(&self) -> Option<String> {
        if !self.websocket.enabled {
            return None;
        }
        if let Some(u) = &self.websocket.public_url {
            return Some(u.clone());
        }
        let base = self.public_url();
        let (scheme, rest) = base.split_once("://").unwrap_or(("https", &base));
        let authority = rest.split('/').next().unwrap_or(rest);
        let ws = if scheme.eq_ignore_ascii_case("http") {
            "ws"
        } else {
            "wss"
        };
        Some(format!("{ws}://{authority}{WEBSOCKET_PATH}"))
    }

    /// The HTTPS URL clients reach this daemon at (the relay API, uploads,
    /// invitations): `[relay] public_url`, else `https://<domain>` with the
    /// first `listen.https` port unless it is 443.
    pub fn public_url(&self) -> String {
        if let Some(u) = &self.relay.public_url {
            return u.trim_end_matches('/').to_string();
        }
        match self.listen.https.first().map(|a| a.port()) {
            Some(443) | None => format!("https://{}", self.domain),
            Some(p) => format!("https://{}:{p}", self.domain),
        }
    }

    /// Load and check the configuration. `path = None` uses defaults and the
    /// environment only.
    pub fn load(path: Option<&Path>) -> Result<Config, Problems> {
        let file_name = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<built-in defaults>".into());
        if let Some(p) = path {
            if let Err(e) = std::fs::metadata(p) {
                return Err(Problems(vec![Problem {
                    source: file_name,
                    key: String::new(),
                    message: format!("cannot read the configuration file: {e}"),
                }]));
            }
        }
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            figment = figment.merge(Toml::file_exact(p));
        }
        figment = figment.merge(
            Env::prefixed("PUSHBOX_")
                .filter(|k| !k.as_str().eq_ignore_ascii_case("config"))
                .split("__"),
        );
        Self::from_figment(figment, path, &file_name)
    }

    /// Load from a TOML string (tests and `check` of inline config).
    pub fn from_toml_str(toml: &str, base: Option<&Path>) -> Result<Config, Problems> {
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
        let mut c = Self::from_figment(figment, None, "<inline>")?;
        if let Some(b) = base {
            c.source = Some(b.join("pushbox.toml"));
            c.data_dir = b.join(&c.data_dir);
        }
        Ok(c)
    }

    fn from_figment(figment: Figment, path: Option<&Path>, file_name: &str) -> Result<Config, Problems> {
        let mut problems = Vec::new();
        let source_of = |key: &str| -> String {
            figment
                .find_metadata(key)
                .map(|m| match &m.source {
                    Some(figment::Source::File(p)) => p.display().to_string(),
                    _ if m.name.contains("environment") => {
                        format!("environment variable PUSHBOX_{}", key.to_uppercase().replace('.', "__"))
                    }
                    _ => file_name.to_string(),
                })
                .unwrap_or_else(|| file_name.to_string())
        };

        // 1. Unknown keys, all of them, each with the nearest valid key.
        let defaults = Figment::from(Serialized::defaults(Config::default()));
        match (figment.data(), defaults.data()) {
            (Ok(user), Ok(known)) => {
                let user = user.into_values().next().unwrap_or_default();
                let known = known.into_values().next().unwrap_or_default();
                unknown_keys(&user, &known, "", &mut |key, msg| {
                    problems.push(Problem {
                        source: source_of(key),
                        key: key.to_string(),
                        message: msg,
                    })
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                for e in e {
                    problems.push(figment_problem(&e, file_name));
                }
            }
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }

        // 2. Types, one section at a time so that every section's problem shows.
        let mut config = Config::default();
        macro_rules! section {
            ($field:ident, $key:literal) => {
                match figment.extract_inner(concat!($key)) {
                    Ok(v) => config.$field = v,
                    Err(e) => {
                        for e in e {
                            let mut p = figment_problem(&e, file_name);
                            // Paths of extract_inner errors are relative to the section.
                            let rest: Vec<&str> = p.key.split('.').filter(|s| !s.is_empty() && *s != $key).collect();
                            p.key = std::iter::once($key).chain(rest).collect::<Vec<_>>().join(".");
                            p.source = source_of(&p.key);
                            problems.push(p);
                        }
                    }
                }
            };
        }
        section!(domain, "domain");
        section!(data_dir, "data_dir");
        section!(listen, "listen");
        section!(tls, "tls");
        section!(registration, "registration");
        section!(federation, "federation");
        section!(relay, "relay");
        section!(limits, "limits");
        section!(log, "log");
        section!(metrics, "metrics");
        section!(contact, "contact");
        section!(archive, "archive");
        section!(turn, "turn");
        section!(components, "components");
        section!(push, "push");
        section!(upload, "upload");
        section!(muc, "muc");
        section!(websocket, "websocket");

        // 3. Values and combinations.
        let base = path
            .and_then(|p| p.parent())
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        config.source = path.map(Path::to_path_buf);
        if config.data_dir.is_relative() {
            config.data_dir = base.join(&config.data_dir);
        }
        for p in [
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.tls.acme.ca_roots,
            &mut config.federation.ca_roots,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.relay.resolve_paths(&base);
        let mut semantic = Vec::new();
        for (domain, c) in config.components.iter_mut() {
            c.resolve(domain, &base, &mut |key: &str, message: String| {
                semantic.push((key.to_string(), message))
            });
        }
        config.validate(&mut |key: &str, message: String| semantic.push((key.to_string(), message)));
        for (key, message) in semantic {
            problems.push(Problem {
                source: source_of(&key),
                key,
                message,
            });
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Problems(problems))
        }
    }

    fn validate(&self, report: &mut dyn FnMut(&str, String)) {
        if let Err(e) = jid::BareJid::new(&self.domain) {
            report("domain", format!("`{}` is not a valid XMPP domain: {e}", self.domain));
        } else if self.domain.contains('@') || self.domain.contains('/') {
            report(
                "domain",
                format!("`{}` must be a bare domain, without `@` or `/`", self.domain),
            );
        }
        if let Some(d) = &self.muc.domain {
            let reserved = [
                self.domain.clone(),
                format!("push.{}", self.domain),
                format!("upload.{}", self.domain),
            ];
            if jid::BareJid::new(d).is_err() || d.contains('@') || d.contains('/') {
                report("muc.domain", format!("`{d}` is not a valid XMPP domain"));
            } else if reserved.iter().any(|r| r.eq_ignore_ascii_case(d)) {
                report(
                    "muc.domain",
                    format!("`{d}` is already used by another service of this server"),
                );
            }
        }
        if self.muc.max_occupants == 0 {
            report("muc.max_occupants", "must be at least 1".into());
        }
        if let Some(u) = &self.websocket.public_url {
            let ok = ["wss://", "ws://"]
                .iter()
                .any(|p| u.len() > p.len() && u[..p.len()].eq_ignore_ascii_case(p));
            if !ok {
                report(
                    "websocket.public_url",
                    format!("`{u}` must be a ws:// or wss:// URL (such as wss://chat.example.org/xmpp-websocket)"),
                );
            }
        }
        for domain in self.components.keys() {
            let key = format!("components.{domain}");
            // The names pushbox serves itself (certs::service_names, one layer
            // up), and the group chat service.
            let mut taken = vec![
                self.domain.clone(),
                format!("push.{}", self.domain),
                format!("upload.{}", self.domain),
            ];
            taken.extend(self.muc_domain());
            if jid::BareJid::new(domain).is_err() || domain.contains('@') || domain.contains('/') {
                report(&key, format!("`{domain}` is not a valid XMPP domain"));
            } else if taken.iter().any(|n| n.eq_ignore_ascii_case(domain)) {
                report(&key, format!("`{domain}` is already served by pushbox itself"));
            }
        }
        let expiry = self.registration.invite_expiry.get();
        if expiry.as_secs() < 60 || expiry.as_secs() > 366 * 86400 {
            report(
                "registration.invite_expiry",
                "must be between one minute and one year".into(),
            );
        }
        match self.tls.mode {
            TlsMode::Files => {
                for (key, v) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                    match v {
                        None => report(key, "is required when tls.mode = \"files\"".into()),
                        Some(p) if !p.is_file() => {
                            report(key, format!("file {} does not exist or is not readable", p.display()))
                        }
                        Some(_) => {}
                    }
                }
            }
            TlsMode::Acme => self.validate_acme(report),
            TlsMode::SelfSigned => {}
        }
        if self.limits.max_stanza_size < 4096 {
            report("limits.max_stanza_size", "must be at least 4096 bytes".into());
        }
        if self.federation.max_stanza_size < 4096 {
            report("federation.max_stanza_size", "must be at least 4096 bytes".into());
        }
        for (domain, target) in &self.federation.hosts {
            if parse_host_port(target).is_none() {
                report(
                    &format!("federation.hosts.{domain}"),
                    format!("`{target}` is not \"host:port\" (e.g. \"127.0.0.1:5269\" or \"xmpp.example.org:5269\")"),
                );
            }
        }
        if let Some(p) = &self.federation.ca_roots {
            if !p.is_file() {
                report(
                    "federation.ca_roots",
                    format!("file {} does not exist or is not readable", p.display()),
                );
            }
        }
        if self.limits.max_depth < 4 {
            report("limits.max_depth", "must be at least 4".into());
        }
        if self.limits.max_auth_failures == 0 {
            report("limits.max_auth_failures", "must be at least 1".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            report("log.level", format!("`{}` is not a valid filter: {e}", self.log.level));
        }
        for (k, list) in [
            ("contact.abuse", &self.contact.abuse),
            ("contact.admin", &self.contact.admin),
            ("contact.feedback", &self.contact.feedback),
            ("contact.security", &self.contact.security),
            ("contact.support", &self.contact.support),
        ] {
            for uri in list {
                if !uri.contains(':') {
                    report(
                        k,
                        format!("`{uri}` is not a URI (expected e.g. mailto:abuse@example.org)"),
                    );
                }
            }
        }
        if let Some(t) = &self.turn {
            t.validate(report);
        }
        self.relay.validate(report);
    }

    fn validate_acme(&self, report: &mut dyn FnMut(&str, String)) {
        let acme = &self.tls.acme;
        if self.domain == "localhost" || self.domain.parse::<std::net::IpAddr>().is_ok() || !self.domain.contains('.') {
            report(
                "domain",
                format!(
                    "`{}` cannot get a certificate from an ACME CA; set a public DNS name, or use tls.mode = \"self-signed\"",
                    self.domain
                ),
            );
        }
        if let Some(c) = &acme.contact {
            let ok = c
                .strip_prefix("mailto:")
                .and_then(|a| a.split_once('@'))
                .is_some_and(|(user, host)| !user.is_empty() && host.contains('.') && !c.contains(char::is_whitespace));
            if !ok {
                report(
                    "tls.acme.contact",
                    format!("`{c}` is not a mailto: URL (expected e.g. \"mailto:admin@example.org\")"),
                );
            }
        }
        if acme.directory_url().is_none() {
            report(
                "tls.acme.directory",
                format!(
                    "`{}` is not valid: use \"letsencrypt\", \"letsencrypt-staging\" or an https:// directory URL",
                    acme.directory
                ),
            );
        }
        if let Some(p) = &acme.ca_roots {
            if !p.is_file() {
                report(
                    "tls.acme.ca_roots",
                    format!("file {} does not exist or is not readable", p.display()),
                );
            }
        }
        match acme.challenge {
            AcmeChallenge::TlsAlpn01 if self.listen.https.is_empty() => report(
                "tls.acme.challenge",
                "\"tls-alpn-01\" is answered on the HTTPS listener, but listen.https is empty: \
                 add listen.https (port 443 as seen from the internet) or use challenge = \"http-01\""
                    .into(),
            ),
            AcmeChallenge::Http01 if self.listen.http.is_empty() => report(
                "tls.acme.challenge",
                "\"http-01\" is answered on the plain HTTP listener, but listen.http is empty: \
                 add listen.http (port 80 as seen from the internet) or use challenge = \"tls-alpn-01\""
                    .into(),
            ),
            _ => {}
        }
    }

    /// Whether dialback with unverifiable certificates is acceptable.
    pub fn require_valid_certificates(&self) -> bool {
        self.federation
            .require_valid_certificates
            .unwrap_or(self.domain != "localhost")
    }
}

fn figment_problem(e: &figment::Error, file_name: &str) -> Problem {
    let key = e
        .path
        .iter()
        .filter(|s| *s != "default")
        .cloned()
        .collect::<Vec<_>>()
        .join(".");
    let source = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(p)) => p.display().to_string(),
        _ => file_name.to_string(),
    };
    Problem {
        source,
        key,
        message: e.kind.to_string(),
    }
}

/// Report keys of `user` that `known` does not have, suggesting the nearest one.
fn unknown_keys(user: &Dict, known: &Dict, prefix: &str, report: &mut dyn FnMut(&str, String)) {
    for (k, v) in user {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match known.get(k) {
            Some(Value::Dict(_, kd)) => {
                if OPEN_TABLES.contains(&full.as_str()) {
                    continue;
                }
                if let Value::Dict(_, ud) = v {
                    unknown_keys(ud, kd, &full, report);
                }
            }
            Some(_) => {}
            None => {
                let nearest = known
                    .keys()
                    .map(|c| (strsim::jaro_winkler(k, c), c))
                    .filter(|(score, _)| *score > 0.7)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, c)| c.clone());
                let msg = match nearest {
                    Some(n) => {
                        let n = if prefix.is_empty() { n } else { format!("{prefix}.{n}") };
                        format!("unknown key; did you mean `{n}`?")
                    }
                    None => {
                        let mut valid: Vec<_> = known.keys().cloned().collect();
                        valid.sort();
                        format!("unknown key; valid keys here: {}", valid.join(", "))
                    }
                };
                report(&full, msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_port_parsing() {
        assert_eq!(parse_host_port("127.0.0.1:25269"), Some(("127.0.0.1".into(), 25269)));
        assert_eq!(parse_host_port("[::1]:5269"), Some(("::1".into(), 5269)));
        assert_eq!(
            parse_host_port("xmpp.example.org:5269"),
            Some(("xmpp.example.org".into(), 5269))
        );
        assert_eq!(parse_host_port("nope"), None);
        assert_eq!(parse_host_port("h:0"), None);
        assert_eq!(parse_host_port(":5269"), None);
    }

    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml_str("", None).unwrap();
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.limits.max_stanza_size, 262144);
    }

    #[test]
    fn websocket_url_follows_public_url_unless_set() {
        let c = Config::from_toml_str("[relay]\npublic_url = \"https://chat.example.org:8443/base\"\n", None).unwrap();
        assert_eq!(
            c.websocket_url().as_deref(),
            Some("wss://chat.example.org:8443/xmpp-websocket")
        );
        let c = Config::from_toml_str("domain = \"example.org\"\n", None).unwrap();
        assert_eq!(
            c.websocket_url().as_deref(),
            Some("wss://example.org:5443/xmpp-websocket")
        );
        let c = Config::from_toml_str("[websocket]\npublic_url = \"wss://ws.example.org/x\"\n", None).unwrap();
        assert_eq!(c.websocket_url().as_deref(), Some("wss://ws.example.org/x"));
        let c = Config::from_toml_str("[websocket]\nenabled = false\n", None).unwrap();
        assert_eq!(c.websocket_url(), None);
        let e = Config::from_toml_str("[websocket]\npublic_url = \"https://x.example/ws\"\n", None).unwrap_err();
        assert!(e.to_string().contains("websocket.public_url"), "{e}");
    }

    #[test]
    fn unknown_keys_are_all_reported_with_suggestions() {
        let e = Config::from_toml_str("domian = \"x\"\n[tls]\nmdoe = \"files\"\n", None).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert_eq!(e.0[0].key, "domian");
        assert!(e.0[0].message.contains("`domain`"), "{}", e.0[0].message);
        assert_eq!(e.0[1].key, "tls.mdoe");
        assert!(e.0[1].message.contains("`tls.mode`"), "{}", e.0[1].message);
    }

    #[test]
    fn type_errors_in_two_sections_are_both_reported() {
        let e = Config::from_toml_str("[tls]\nmode = \"bogus\"\n[limits]\nmax_depth = \"deep\"\n", None).unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"tls.mode"), "{e}");
        assert!(keys.contains(&"limits.max_depth"), "{e}");
    }

    #[test]
    fn files_mode_needs_existing_files() {
        let e = Config::from_toml_str("[tls]\nmode = \"files\"\ncert = \"/nonexistent.pem\"\n", None).unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["tls.cert", "tls.key"], "{e}");
    }

    #[test]
    fn acme_settings_are_checked() {
        let e = Config::from_toml_str(
            "domain = \"localhost\"\n[listen]\nhttps = []\n[tls]\nmode = \"acme\"\n[tls.acme]\ncontact = \"admin@example.org\"\ndirectory = \"http://ca.example/dir\"\n",
            None,
        )
        .unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["domain", "tls.acme.contact", "tls.acme.directory", "tls.acme.challenge"],
            "{e}"
        );
        let e = Config::from_toml_str(
            "domain = \"a.example\"\n[tls]\nmode = \"acme\"\n[tls.acme]\nchallenge = \"http-01\"\n",
            None,
        )
        .unwrap_err();
        assert!(e.0[0].message.contains("listen.http is empty"), "{e}");
        let c = Config::from_toml_str(
            "domain = \"a.example\"\n[tls]\nmode = \"acme\"\n[tls.acme]\ncontact = \"mailto:admin@a.example\"\ndirectory = \"letsencrypt-staging\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.tls.mode, TlsMode::Acme);
    }

    #[test]
    fn federation_hosts_take_free_form_keys() {
        let c = Config::from_toml_str("[federation.hosts]\n\"b.example\" = \"127.0.0.1:25269\"\n", None).unwrap();
        assert_eq!(c.federation.hosts["b.example"], "127.0.0.1:25269");
    }
}
