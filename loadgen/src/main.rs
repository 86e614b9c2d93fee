//! pushbox-loadgen: drives an XMPP server (pushbox, Prosody, ejabberd, any)
//! over TLS like real clients do and reports what the server spent, read
//! from /proc, next to the latency and throughput the clients saw.

mod client;
mod cost;
mod floor;
mod rxstamp;
mod scram;
mod xml;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use client::{login, login_with, Auth, Conn, Steps, Target};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(
    version,
    about = "XMPP load generator: idle sessions, message exchange, login storms"
)]
struct Cli {
    /// Server address (ip:port) of a STARTTLS or direct TLS client port.
    #[arg(long, default_value = "127.0.0.1:5222")]
    server: SocketAddr,
    /// The XMPP domain (also the TLS server name).
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The port speaks direct TLS (XEP-0368) instead of STARTTLS.
    #[arg(long)]
    direct_tls: bool,
    /// No TLS: plain TCP with SASL PLAIN (only `floor --plain` accepts that;
    /// it measures what TLS costs).
    #[arg(long, conflicts_with = "direct_tls")]
    plain: bool,
    /// Trust this CA (PEM); without it any server certificate is accepted.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// SASL mechanism: SCRAM-SHA-256, SCRAM-SHA-1 or PLAIN (default: the best offered).
    #[arg(long)]
    mech: Option<String>,
    /// Account names are this prefix followed by a number from 0.
    #[arg(long, default_value = "lg")]
    user_prefix: String,
    /// The password of every account.
    #[arg(long, default_value = "loadgen-pw")]
    password: String,
    /// Connect from these local addresses in turn (comma-separated, e.g.
    /// 127.0.0.1,127.0.0.2): needed beyond ~28,000 connections to one port.
    #[arg(long, value_delimiter = ',')]
    source: Vec<std::net::IpAddr>,
    /// Make every TLS handshake a full one: offer no session the server
    /// issued a ticket for (by default the generator resumes, as clients
    /// that keep a TLS session cache do).
    #[arg(long)]
    no_tls_resumption: bool,
    /// Server process id: report its CPU time and RSS from /proc.
    #[arg(long)]
    pid: Option<String>,
    /// Connections opened at the same time while setting up.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// A label printed with the results.
    #[arg(long, default_value = "server")]
    label: String,
    /// Worker threads of the generator's own runtime (default: one per
    /// core). The generator shares the machine with the server: on two
    /// cores its workers compete with the server's for the CPU.
    #[arg(long)]
    threads: Option<usize>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Create accounts 0..N by in-band registration (XEP-0077).
    Register {
        #[arg(long)]
        users: usize,
    },
    /// Hold N authenticated sessions (with presence) open.
    Idle {
        #[arg(long)]
        sessions: usize,
        /// Accounts to spread the sessions over (default: one each).
        #[arg(long)]
        users: Option<usize>,
        /// Seconds to hold them after all are up.
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
    /// P pairs: one side keeps W messages in flight, the other echoes each; M each way.
    Messages {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Messages each pair sends in each direction.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Messages in flight per pair (1 = ping-pong).
        #[arg(long, default_value_t = 10)]
        window: usize,
        /// Extra body bytes after the timestamp.
        #[arg(long, default_value_t = 0)]
        pad: usize,
        /// Write every message's send time and latency (µs since the
        /// generator started, one "sent latency" pair a line) to this file,
        /// to see when the slow ones were sent.
        #[arg(long)]
        lat_file: Option<PathBuf>,
    },
    /// One room with N occupants: one of them sends M messages with W in
    /// flight (its own reflection frees a slot); everyone receives every one.
    Group {
        #[arg(long, default_value_t = 50)]
        occupants: usize,
        /// Room messages sent.
        #[arg(long, default_value_t = 500)]
        count: usize,
        #[arg(long, default_value_t = 10)]
        window: usize,
        /// The room JID (default: loadgen@groups.<domain>).
        #[arg(long)]
        room: Option<String>,
    },
    /// Not a client: a forwarder that lets clients log in (SASL PLAIN,
    /// any password) and then copies each client's bytes unparsed to its
    /// partner's connection (lg0 with lg1, lg2 with lg3…): the floor under
    /// a routed message. Run `messages` against it with `--mech PLAIN` and
    /// its `--pid`; `--plain` or `--direct-tls` here and there alike.
    Floor {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Certificate chain (PEM), for TLS (needed unless `--plain`).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Its private key (PEM).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Hand each chunk to the partner's writer task (a channel and a
        /// wake-up, as a server's session) instead of writing into the
        /// partner's socket from the reading task.
        #[arg(long)]
        hop: bool,
    },
    /// N logins (TLS, SASL, bind, close), C at a time.
    Logins {
        #[arg(long)]
        count: usize,
        /// Accounts to cycle through.
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value_t = 10)]
        parallel: usize,
        /// SASL2 (XEP-0388) + Bind 2 (XEP-0386) with SCRAM, instead of SASL,
        /// stream restart and a bind IQ.
        #[arg(long, conflicts_with = "fast")]
        sasl2: bool,
        /// SASL2 + Bind 2 with a FAST token (XEP-0484, HT-SHA-256-NONE):
        /// each account first obtains a token (not measured), then every
        /// measured login uses only the token.
        #[arg(long, conflicts_with = "tls_only")]
        fast: bool,
        /// Only TCP, TLS and the first stream features, then close: the
        /// floor under every login.
        #[arg(long, conflicts_with = "sasl2")]
        tls_only: bool,
    },
}

fn start() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    start().elapsed().as_micros() as u64
}

/// Server CPU µs used, RSS before and after in KiB.
type ServerCost = (u64, u64, u64);

struct Meter {
    pid: Option<String>,
    before: Option<cost::Sample>,
    me: cost::Sample,
    t0: Instant,
}

impl Meter {
    fn begin(pid: &Option<String>) -> Result<Meter> {
        Ok(Meter {
            pid: pid.clone(),
            before: pid.as_deref().map(cost::sample).transpose()?,
            me: cost::sample("self")?,
            t0: Instant::now(),
        })
    }

    /// (wall seconds, server cost, own CPU µs).
    fn end(&self) -> Result<(f64, Option<ServerCost>, u64)> {
        let wall = self.t0.elapsed().as_secs_f64();
        let server = match (&self.pid, &self.before) {
            (Some(p), Some(b)) => {
                let a = cost::sample(p)?;
                Some((a.cpu_us_since(b), b.rss_kib, a.rss_kib))
            }
            _ => None,
        };
        Ok((wall, server, cost::sample("self")?.cpu_us_since(&self.me)))
    }
}

fn user(cli: &Cli, i: usize) -> String {
    format!("{}{i}", cli.user_prefix)
}

/// Log in `n` sessions (account `which(i)`), `concurrency` at a time.
async fn open_many(
    cli: &Arc<Cli>,
    t: &Arc<Target>,
    n: usize,
    which: impl Fn(usize) -> usize,
    steps: Steps,
) -> Result<Vec<(Conn, String)>> {
    let sem = Arc::new(Semaphore::new(cli.concurrency));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (cli, t, sem) = (cli.clone(), t.clone(), sem.clone());
        let u = user(&cli, which(i));
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            login(&t, &u, &cli.password, steps)
                .await
                .with_context(|| format!("login {u}"))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

async fn close_all(conns: Vec<(Conn, String)>) {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(mut c, _)| {
            tokio::spawn(async move {
                let _ = c.send("</stream:stream>").await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(ev) = c.next().await {
                        if matches!(ev, xml::Ev::Close) {
                            break;
                        }
                    }
                })
                .await;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn report(cli: &Cli, mode: &str, fields: &[(&str, String)]) {
    let kv: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT label={} mode={mode} {}", cli.label, kv.join(" "));
}

fn server_fields(out: &mut Vec<(&'static str, String)>, s: Option<ServerCost>, per: f64, unit: &'static str) {
    if let Some((cpu, rss0, rss1)) = s {
        out.push(("server_cpu_ms", format!("{:.0}", cpu as f64 / 1000.0)));
        out.push((unit, format!("{:.1}", cpu as f64 / per)));
        out.push(("rss_before_kib", rss0.to_string()));
        out.push(("rss_after_kib", rss1.to_string()));
    }
}

/// One message's times, µs: sent (on the generator's clock), and the
/// latency until the receiving client had parsed it (`seen`) and until the
/// kernel had received its bytes at the client's socket (`arrived`).
struct Timing {
    sent: u64,
    seen: u64,
    arrived: Option<u64>,
}

/// One message exchange: `a` keeps `window` messages in flight to `b`, `b` echoes.
async fn pair(
    (mut a, ja): (Conn, String),
    (mut b, jb): (Conn, String),
    count: usize,
    window: usize,
    pad: Arc<String>,
    errors: Arc<AtomicU64>,
) -> Result<(Vec<Timing>, Conn, Conn, String, String)> {
    let bare = |j: &str| j.split('/').next().unwrap_or(j).to_string();
    let (ba, bb) = (bare(&ja), bare(&jb));
    let msg = |to: &str, id: usize, stamp: u64| {
        format!("<message to='{to}' type='chat' id='m{id}'><body>{stamp} {pad}</body></message>")
    };
    let lat_of = |el: &minidom::Element, rx: Option<u64>| -> Option<Timing> {
        let body = el.get_child("body", "jabber:client")?.text();
        let stamp: u64 = body.split(' ').next()?.parse().ok()?;
        Some(Timing {
            sent: stamp,
            seen: now_us().saturating_sub(stamp),
            arrived: rx.map(|r| r.saturating_sub(stamp)),
        })
    };
    let echo_errors = errors.clone();
    let echo_pad = pad.clone();
    let echo = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(count);
        while lat.len() < count {
            let el = b.element().await?;
            if el.name() != "message" {
                continue;
            }
            if el.attr("type") == Some("error") {
                echo_errors.fetch_add(1, Ordering::Relaxed);
                bail!("error bounce: {}", String::from(&el));
            }
            let Some(l) = lat_of(&el, b.io.last_rx_us()) else {
                continue;
            };
            lat.push(l);
            let id = lat.len();
            b.send(&format!(
                "<message to='{ba}' type='chat' id='e{id}'><body>{} {echo_pad}</body></message>",
                now_us()
            ))
            .await?;
        }
        Ok::<_, anyhow::Error>((lat, b))
    });
    let mut sent = 0;
    let mut lat = Vec::with_capacity(count * 2);
    while sent < window.min(count) {
        a.send(&msg(&bb, sent, now_us())).await?;
        sent += 1;
    }
    let mut got = 0;
    while got < count {
        let el = a.element().await?;
        if el.name() != "message" {
            continue;
        }
        if el.attr("type") == Some("error") {
            errors.fetch_add(1, Ordering::Relaxed);
            bail!("error bounce: {}", String::from(&el));
        }
        let Some(l) = lat_of(&el, a.io.last_rx_us()) else {
            continue;
        };
        lat.push(l);
        got += 1;
        if sent < count {
            a.send(&msg(&bb, sent, now_us())).await?;
            sent += 1;
        }
    }
    let (lb, b) = echo.await??;
    lat.extend(lb);
    Ok((lat, a, b, ja, jb))
}

/// Read elements until `pred` holds; a presence error is a failure.
async fn until(c: &mut Conn, what: &str, pred: impl Fn(&minidom::Element) -> bool) -> Result<minidom::Element> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let el = c.element().await?;
            if el.attr("type") == Some("error") && el.name() != "message" {
                bail!("{what}: {}", String::from(&el));
            }
            if pred(&el) {
                return Ok(el);
            }
        }
    })
    .await
    .with_context(|| format!("waiting for {what}"))?
}

/// Fill a room: the first occupant creates it and submits an instant
/// configuration, the others join; every join waits for the subject.
async fn fill_room(conns: &mut [(Conn, String)], room: &str) -> Result<()> {
    let is_self = |el: &minidom::Element| {
        el.name() == "presence"
            && el
                .get_child("x", "http://jabber.org/protocol/muc#user")
                .is_some_and(|x| {
                    x.children()
                        .any(|s| s.name() == "status" && s.attr("code") == Some("110"))
                })
    };
    for (i, (c, _)) in conns.iter_mut().enumerate() {
        c.send(&format!(
            "<presence to='{room}/lg{i}'><x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>"
        ))
        .await?;
        if i == 0 {
            until(c, "own presence in the room", is_self).await?;
            c.send(&format!(
                "<iq type='set' id='cfg' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ))
            .await?;
            until(c, "the room configured", |el| {
                el.name() == "iq" && el.attr("id") == Some("cfg")
            })
            .await?;
        } else {
            until(c, "the room's subject", |el| {
                el.name() == "message" && el.get_child("subject", "jabber:client").is_some()
            })
            .await?;
        }
    }
    Ok(())
}

/// Receive `count` room messages with a body from the sender `lg0`; their latencies.
async fn receive_room(mut c: Conn, count: usize) -> Result<(Vec<u64>, Conn)> {
    let mut lat = Vec::with_capacity(count);
    while lat.len() < count {
        let el = c.element().await?;
        if el.name() != "message" || el.attr("type") != Some("groupchat") {
            continue;
        }
        let Some(body) = el.get_child("body", "jabber:client").map(|b| b.text()) else {
            continue;
        };
        let Some(stamp) = body.strip_prefix("lg ").and_then(|b| b.parse::<u64>().ok()) else {
            continue;
        };
        lat.push(now_us().saturating_sub(stamp));
    }
    Ok((lat, c))
}

async fn run(cli: Arc<Cli>) -> Result<()> {
    let mech = cli.mech.as_deref().map(scram::Mech::parse).transpose()?;
    let t = Arc::new(Target {
        addr: cli.server,
        sources: cli.source.clone(),
        next_source: Default::default(),
        domain: cli.domain.clone(),
        direct_tls: cli.direct_tls,
        plain: cli.plain,
        tls: client::tls_config(cli.ca.as_deref(), cli.direct_tls, !cli.no_tls_resumption)?,
        mech,
    });
    start();
    let settle = Duration::from_millis(500);
    match &cli.mode {
        Mode::Floor { listen, cert, key, hop } => {
            let o = floor::Options {
                listen: *listen,
                domain: cli.domain.clone(),
                direct_tls: cli.direct_tls,
                hop: *hop,
            };
            let tls = match (cert, key, cli.plain) {
                (_, _, true) => None,
                (Some(c), Some(k), false) => Some((c.as_path(), k.as_path())),
                _ => bail!("floor: --cert and --key are needed for TLS (or --plain)"),
            };
            floor::serve(o, tls).await?;
        }
        Mode::Register { users } => {
            let steps = Steps {
                register: true,
                presence: false,
            };
            let conns = open_many(&cli, &t, *users, |i| i, steps).await?;
            close_all(conns).await;
            println!("{} accounts ready", users);
        }
        Mode::Idle { sessions, users, hold } => {
            let users = users.unwrap_or(*sessions).max(1);
            let steps = Steps {
                register: false,
                presence: true,
            };
            let m = Meter::begin(&cli.pid)?;
            let conns = open_many(&cli, &t, *sessions, |i| i % users, steps).await?;
            let setup = m.t0.elapsed().as_secs_f64();
            // Let the server finish what logins started before reading its memory.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (_, server, own) = m.end()?;
            let mut f = vec![
                ("sessions", sessions.to_string()),
                ("setup_s", format!("{setup:.2}")),
                ("loadgen_cpu_ms", (own / 1000).to_string()),
            ];
            if let Some((_, rss0, rss1)) = server {
                f.push((
                    "kib_per_session",
                    format!("{:.1}", (rss1 as f64 - rss0 as f64) / *sessions as f64),
                ));
            }
            server_fields(&mut f, server, *sessions as f64, "server_cpu_us_per_login");
            report(&cli, "idle", &f);
            tokio::time::sleep(Duration::from_secs(*hold)).await;
            close_all(conns).await;
        }
        Mode::Messages {
            pairs,
            count,
            window,
            pad,
            lat_file,
        } => {
            let steps = Steps {
                register: false,
                presence: true,
            };
            let conns = open_many(&cli, &t, pairs * 2, |i| i, steps).await?;
            // Presence and roster traffic from the logins settles first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let errors = Arc::new(AtomicU64::new(0));
            let pad = Arc::new("x".repeat(*pad));
            let m = Meter::begin(&cli.pid)?;
            let mut it = conns.into_iter();
            let mut tasks = vec![];
            while let (Some(a), Some(b)) = (it.next(), it.next()) {
                tasks.push(tokio::spawn(pair(a, b, *count, *window, pad.clone(), errors.clone())));
            }
            let mut timed = Vec::with_capacity(pairs * count * 2);
            let mut back = vec![];
            for task in tasks {
                let (l, a, b, ja, jb) = task.await??;
                timed.extend(l);
                back.push((a, ja));
                back.push((b, jb));
            }
            let busy = m.t0.elapsed().as_secs_f64();
            tokio::time::sleep(settle).await;
            let (_, server, own) = m.end()?;
            if let Some(path) = lat_file {
                timed.sort_unstable_by_key(|t| t.sent);
                let lines: String = timed
                    .iter()
                    .map(|t| format!("{} {} {}\n", t.sent, t.seen, t.arrived.map_or(-1, |a| a as i64)))
                    .collect();
                std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
            }
            let mut lat: Vec<u64> = timed.iter().map(|t| t.seen).collect();
            lat.sort_unstable();
            let mut arrived: Vec<u64> = timed.iter().filter_map(|t| t.arrived).collect();
            arrived.sort_unstable();
            let routed = (pairs * count * 2) as f64;
            let mut f = vec![
                ("pairs", pairs.to_string()),
                ("window", window.to_string()),
                ("routed", format!("{routed:.0}")),
                ("seconds", format!("{busy:.2}")),
                ("msgs_per_s", format!("{:.0}", routed / busy)),
                ("p50_ms", format!("{:.3}", pct(&lat, 0.50))),
                ("p90_ms", format!("{:.3}", pct(&lat, 0.90))),
                ("p99_ms", format!("{:.3}", pct(&lat, 0.99))),
                ("p999_ms", format!("{:.3}", pct(&lat, 0.999))),
                ("max_ms", format!("{:.3}", pct(&lat, 1.0))),
                // To the kernel's receipt at the generator's socket: without
                // the generator's own waiting for a core and parsing.
                ("arrived_p50_ms", format!("{:.3}", pct(&arrived, 0.50))),
                ("arrived_p99_ms", format!("{:.3}", pct(&arrived, 0.99))),
                ("errors", errors.load(Ordering::Relaxed).to_string()),
                ("loadgen_cpu_us_per_msg", format!("{:.1}", own as f64 / routed)),
            ];
            server_fields(&mut f, server, routed, "server_cpu_us_per_msg");
            report(&cli, "messages", &f);
            close_all(back).await;
        }
        Mode::Group {
            occupants,
            count,
            window,
            room,
        } => {
            let steps = Steps {
                register: false,
                presence: true,
            };
            let room = room
                .clone()
                .unwrap_or_else(|| format!("loadgen{}@groups.{}", std::process::id(), cli.domain));
            let mut conns = open_many(&cli, &t, (*occupants).max(2), |i| i, steps).await?;
            fill_room(&mut conns, &room).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let m = Meter::begin(&cli.pid)?;
            let mut it = conns.into_iter();
            let (mut sender, sj) = it.next().expect("two occupants at least");
            let mut receivers = vec![];
            let mut names = vec![];
            for (c, j) in it {
                receivers.push(tokio::spawn(receive_room(c, *count)));
                names.push(j);
            }
            // The sender's reflections pace it: `window` messages in flight.
            let (mut sent, mut reflected) = (0usize, 0usize);
            let mut lat = Vec::with_capacity(count * occupants);
            while reflected < *count {
                while sent < *count && sent - reflected < *window {
                    sender
                        .send(&format!(
                            "<message to='{room}' type='groupchat' id='g{sent}'><body>lg {}</body></message>",
                            now_us()
                        ))
                        .await?;
                    sent += 1;
                }
                let el = sender.element().await?;
                if el.name() == "message" && el.attr("type") == Some("error") {
                    bail!("error bounce: {}", String::from(&el));
                }
                if let Some(stamp) = el
                    .get_child("body", "jabber:client")
                    .and_then(|b| b.text().strip_prefix("lg ").and_then(|s| s.parse::<u64>().ok()))
                {
                    lat.push(now_us().saturating_sub(stamp));
                    reflected += 1;
                }
            }
            let mut back = vec![(sender, sj)];
            for (task, j) in receivers.into_iter().zip(names) {
                let (l, c) = task.await??;
                lat.extend(l);
                back.push((c, j));
            }
            let busy = m.t0.elapsed().as_secs_f64();
            tokio::time::sleep(settle).await;
            let (_, server, own) = m.end()?;
            lat.sort_unstable();
            let copies = (count * back.len()) as f64;
            let mut f = vec![
                ("occupants", back.len().to_string()),
                ("room_messages", count.to_string()),
                ("copies", format!("{copies:.0}")),
                ("seconds", format!("{busy:.2}")),
                ("copies_per_s", format!("{:.0}", copies / busy)),
                ("p50_ms", format!("{:.3}", pct(&lat, 0.50))),
                ("p99_ms", format!("{:.3}", pct(&lat, 0.99))),
                ("loadgen_cpu_us_per_copy", format!("{:.1}", own as f64 / copies)),
            ];
            if let Some((cpu, _, _)) = server {
                f.push((
                    "server_cpu_us_per_room_msg",
                    format!("{:.1}", cpu as f64 / *count as f64),
                ));
            }
            server_fields(&mut f, server, copies, "server_cpu_us_per_copy");
            report(&cli, "group", &f);
            close_all(back).await;
        }
        Mode::Logins {
            count,
            users,
            parallel,
            sasl2,
            fast,
            tls_only,
        } => {
            let steps = Steps::default();
            let auth = match (sasl2, fast, tls_only) {
                (_, _, true) => Auth::TlsOnly,
                (_, true, _) => Auth::Fast,
                (true, _, _) => Auth::Sasl2,
                _ => Auth::Sasl1,
            };
            // FAST: one password login per account obtains its token.
            let mut tokens = std::collections::HashMap::new();
            if auth == Auth::Fast {
                for i in 0..*users {
                    let u = user(&cli, i);
                    let s = login_with(&t, &u, &cli.password, steps, Auth::Sasl2, None, true)
                        .await
                        .with_context(|| format!("login {u} for a FAST token"))?;
                    let tok = s.token.clone().ok_or_else(|| anyhow!("no FAST token for {u}"))?;
                    tokens.insert(u, tok);
                    close_all(vec![(s.conn, s.jid)]).await;
                }
            }
            let tokens = Arc::new(tokens);
            let m = Meter::begin(&cli.pid)?;
            let sem = Arc::new(Semaphore::new(*parallel));
            let mut tasks = vec![];
            let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(*count)));
            let rtts = Arc::new(std::sync::atomic::AtomicU64::new(0));
            for i in 0..*count {
                let (cli, t, sem, lat, tokens, rtts) = (
                    cli.clone(),
                    t.clone(),
                    sem.clone(),
                    lat.clone(),
                    tokens.clone(),
                    rtts.clone(),
                );
                let u = user(&cli, i % users);
                tasks.push(tokio::spawn(async move {
                    let _p = sem.acquire().await;
                    let t0 = now_us();
                    let tok = tokens.get(&u).map(String::as_str);
                    let s = login_with(&t, &u, &cli.password, steps, auth, tok, false)
                        .await
                        .with_context(|| format!("login {u}"))?;
                    lat.lock().unwrap().push(now_us() - t0);
                    rtts.fetch_add(u64::from(s.conn.rtts), std::sync::atomic::Ordering::Relaxed);
                    close_all(vec![(s.conn, s.jid)]).await;
                    Ok::<_, anyhow::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            let busy = m.t0.elapsed().as_secs_f64();
            tokio::time::sleep(settle).await;
            let (_, server, own) = m.end()?;
            let mut lat = lat.lock().unwrap().clone();
            lat.sort_unstable();
            let mut f = vec![
                (
                    "auth",
                    match auth {
                        Auth::Sasl1 => "sasl1+bind",
                        Auth::Sasl2 => "sasl2+bind2",
                        Auth::Fast => "fast+bind2",
                        Auth::TlsOnly => "tls-only",
                    }
                    .to_string(),
                ),
                ("logins", count.to_string()),
                ("parallel", parallel.to_string()),
                (
                    "round_trips_to_bound",
                    format!(
                        "{:.1}",
                        rtts.load(std::sync::atomic::Ordering::Relaxed) as f64 / *count as f64
                    ),
                ),
                ("logins_per_s", format!("{:.0}", *count as f64 / busy)),
                ("p50_ms", format!("{:.3}", pct(&lat, 0.50))),
                ("p99_ms", format!("{:.3}", pct(&lat, 0.99))),
                ("loadgen_cpu_us_per_login", format!("{:.0}", own as f64 / *count as f64)),
            ];
            server_fields(&mut f, server, *count as f64, "server_cpu_us_per_login");
            report(&cli, "logins", &f);
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Arc::new(Cli::parse());
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build();
    let r = rt.map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run(cli)));
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushbox-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
