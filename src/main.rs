//! The `pushbox` command: parse the command line, load the configuration,
//! set up logging, bind listeners and run.

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use pushbox::{config::Config, store};
use std::{io::Read, process::ExitCode};

mod cli;

use cli::{Cli, Command, InviteCmd, RoomCmd, UserCmd};

/// Exit status for a configuration problem.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve) {
        // A command's output piped into `head` ends the command quietly, as
        // any Unix tool does, instead of a panic on the closed pipe. The
        // daemon keeps Rust's default (SIGPIPE ignored, EPIPE as an error).
        // SAFETY: at the start of main, before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let path = pushbox::config::locate(cli.config.as_deref());
    if let Command::Check { what, json } = cli.command {
        use pushbox::check::Section;
        let what = what.map(|w| match w {
            cli::CheckSection::Config => Section::Config,
            cli::CheckSection::Dns => Section::Dns,
            cli::CheckSection::Certs => Section::Certs,
            cli::CheckSection::Ports => Section::Ports,
            cli::CheckSection::Database => Section::Database,
        });
        return ExitCode::from(pushbox::check::main(path.as_deref(), what, json));
    }
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(problems) => {
            eprint!("pushbox: {problems}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let r = match cli.command {
        Command::Serve => serve(config),
        Command::Check { .. } => unreachable!("handled before loading the configuration"),
        Command::User(u) => user(&config, u),
        Command::Invite(i) => invite(&config, i),
        Command::Room(r) => room(&config, r),
        Command::Backup { file } => backup(&config, &file),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        pushbox::config::LogFormat::Json => b.json().init(),
        pushbox::config::LogFormat::Text => b.init(),
    }
}

fn serve(config: Config) -> Result<()> {
    init_logging(&config);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listeners = pushbox::Listeners::bind(&config).await?;
        // Handlers are installed now, before readiness is announced: a SIGTERM
        // right after READY=1 must stop the daemon cleanly, not kill it.
        let signalled = shutdown_signal()?;
        let shutdown = async {
            signalled.await;
            pushbox::systemd::stopping();
        };
        pushbox::run(config, listeners, shutdown, pushbox::systemd::ready).await
    })
}

/// Install the SIGTERM and SIGINT handlers; the future ends on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn open_store(config: &Config) -> Result<store::Store> {
    store::Store::open_in(&config.data_dir).map_err(|e| anyhow!("{e}"))
}

fn username_of(config: &Config, user: &str) -> Result<String> {
    match user.split_once('@') {
        Some((u, d)) if d.eq_ignore_ascii_case(&config.domain) => Ok(u.to_string()),
        Some((_, d)) => bail!("{user} is not on this server's domain ({}), but on {d}", config.domain),
        None => Ok(user.to_string()),
    }
}

fn read_password(from_stdin: bool) -> Result<String> {
    let pw = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the password from standard input")?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            bail!("the passwords differ");
        }
        a
    };
    if pw.is_empty() {
        bail!("the password is empty");
    }
    Ok(pw)
}

fn user(config: &Config, cmd: UserCmd) -> Result<()> {
    let s = open_store(config)?;
    let e = |e: store::StoreError| anyhow!("{e}");
    match cmd {
        UserCmd::Add {
            user,
            password_stdin,
            admin,
        } => {
            let name = username_of(config, &user)?;
            let pw = read_password(password_stdin)?;
            s.blocking(|c| store::accounts::create(c, &name, &pw, admin))
                .map_err(e)?;
            println!(
                "created {}@{}",
                store::accounts::normalize(&name).map_err(e)?,
                config.domain
            );
        }
        UserCmd::Del { user } => {
            let name = username_of(config, &user)?;
            if !s.blocking(|c| store::accounts::delete(c, &name)).map_err(e)? {
                bail!("no account {name}");
            }
            println!("deleted {name}@{}", config.domain);
        }
        UserCmd::Passwd { user, password_stdin } => {
            let name = username_of(config, &user)?;
            let pw = read_password(password_stdin)?;
            if !s
                .blocking(|c| store::accounts::set_password(c, &name, &pw))
                .map_err(e)?
            {
                bail!("no account {name}");
            }
            println!("password changed for {name}@{}", config.domain);
        }
        UserCmd::List => {
            for (name, admin, _) in s.blocking(|c| store::accounts::list(c)).map_err(e)? {
                println!("{name}@{}{}", config.domain, if admin { " (admin)" } else { "" });
            }
        }
        UserCmd::Devices { user } => {
            let name = username_of(config, &user)?;
            let Some(agents) = s.blocking(|c| store::devices::list(c, &name)).map_err(e)? else {
                bail!("no account {name}");
            };
            let date = |t: i64| {
                time::OffsetDateTime::from_unix_timestamp(t)
                    .ok()
                    .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_default()
            };
            println!("DEVICE\tSOFTWARE\tNAME\tLAST LOGIN\tTOKEN EXPIRES");
            for a in agents {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    a.agent_id,
                    a.software.as_deref().unwrap_or("-"),
                    a.device.as_deref().unwrap_or("-"),
                    date(a.last_seen),
                    a.token_expires.map(date).unwrap_or_else(|| "-".into())
                );
            }
        }
        UserCmd::Revoke { user, device } => {
            use store::devices::Revoked;
            let name = username_of(config, &user)?;
            match s.blocking(|c| store::devices::revoke(c, &name, &device)).map_err(e)? {
                Revoked::NoAccount => bail!("no account {name}"),
                Revoked::NoDevice => bail!("{name} has no device `{device}` (see `pushbox user devices {name}`)"),
                Revoked::Ambiguous => {
                    bail!("more than one device of {name} starts with `{device}`; give more of its id")
                }
                Revoked::Done(id, n) => println!("revoked {id} of {name}@{} ({n} token(s) ended)", config.domain),
            }
        }
    }
    Ok(())
}

fn room(config: &Config, cmd: RoomCmd) -> Result<()> {
    use pushbox::xmpp::services::muc::{config::RoomConfig, config::Whois, room::Room};
    let Some(domain) = config.muc_domain() else {
        bail!("group chat is off ([muc] enabled = false)");
    };
    let s = open_store(config)?;
    let e = |e: store::StoreError| anyhow!("{e}");
    let node = |name: &str| -> Result<String> {
        let j =
            jid::BareJid::new(&format!("{name}@{domain}")).map_err(|_| anyhow!("`{name}` is not a valid room name"))?;
        Ok(j.node().map(|n| n.to_string()).unwrap_or_default())
    };
    match cmd {
        RoomCmd::List => {
            for r in s.blocking(|c| store::muc::rooms(c)).map_err(e)? {
                let stored: pushbox::xmpp::services::muc::room::Stored =
                    serde_json::from_str(&r.config).unwrap_or_default();
                let affs = s.blocking(|c| store::muc::affiliations(c, r.id)).map_err(e)?;
                let owners: Vec<&str> = affs.iter().filter(|a| a.1 == "owner").map(|a| a.0.as_str()).collect();
                let members = affs.iter().filter(|a| a.1 != "outcast").count();
                let c = &stored.config;
                let kind = [
                    if c.members_only { "members-only" } else { "open" },
                    if c.whois == Whois::Anyone {
                        "non-anonymous"
                    } else {
                        "semi-anonymous"
                    },
                    if c.public { "public" } else { "hidden" },
                    if c.persistent { "persistent" } else { "temporary" },
                ]
                .join(",");
                println!(
                    "{}@{domain}\t{kind}\towners {}\tmembers {members}\t{}",
                    r.name,
                    owners.join(" "),
                    c.name
                );
            }
        }
        RoomCmd::Create {
            name,
            owner,
            title,
            private,
            public,
        } => {
            let name = node(&name)?;
            let owner = if owner.contains('@') {
                owner
            } else {
                format!("{owner}@{}", config.domain)
            };
            let owner = jid::BareJid::new(&owner).map_err(|_| anyhow!("--owner `{owner}` is not a JID"))?;
            let rc = RoomConfig {
                name: title.unwrap_or_default(),
                members_only: private,
                whois: if private { Whois::Anyone } else { Whois::Moderators },
                public,
                max_users: config.muc.max_occupants,
                history_length: config.muc.max_history.min(20),
                ..Default::default()
            };
            let json = Room::stored_config(&rc, false);
            let secret: [u8; 32] = rand::random();
            let created = s
                .blocking(|c| store::muc::create(c, &name, &json, &secret, owner.as_str()))
                .map_err(e)?;
            if created.is_none() {
                bail!("{name}@{domain} exists already");
            }
            println!("{name}@{domain}");
        }
        RoomCmd::Destroy { name } => {
            let name = node(&name)?;
            let gone = s
                .blocking(|c| match store::muc::room(c, &name)? {
                    Some(r) => store::muc::destroy(c, r.id),
                    None => Ok(false),
                })
                .map_err(e)?;
            if !gone {
                bail!("no room {name}@{domain}");
            }
            println!("destroyed {name}@{domain} (a running daemon that has it loaded notices at the next join)");
        }
    }
    Ok(())
}

fn invite(config: &Config, cmd: InviteCmd) -> Result<()> {
    let s = open_store(config)?;
    let e = |e: store::StoreError| anyhow!("{e}");
    match cmd {
        InviteCmd::Create { admin, expires, uses } => {
            let ttl = humantime::parse_duration(&expires).with_context(|| format!("--expires {expires}"))?;
            if uses == 0 {
                bail!("--uses must be at least 1");
            }
            let token = s
                .blocking(|c| store::invites::create(c, ttl.as_secs() as i64, uses, admin))
                .map_err(e)?;
            if config.registration.mode == pushbox::config::RegistrationMode::Closed {
                eprintln!(
                    "warning: [registration] mode is \"closed\" in the config, so this invitation \
                     cannot be used until it is \"invite\" or \"open\""
                );
            }
            if config.listen.https.is_empty() {
                eprintln!("warning: listen.https is empty, so the invitation page is not served");
            }
            println!("{}/invite/{token}", config.public_url());
            println!("xmpp:{}?register;preauth={token};ibr=y", config.domain);
        }
        InviteCmd::List => {
            let now = store::now();
            for i in s.blocking(|c| store::invites::list(c)).map_err(e)? {
                if i.expires_at > now && i.uses_left > 0 {
                    let kind = match (&i.contact, i.allow_registration) {
                        (Some(c), true) => format!("contact of {c}@{}, or a new account", config.domain),
                        (Some(c), false) => format!("contact of {c}@{} (existing accounts)", config.domain),
                        (None, _) => "new account".to_string(),
                    };
                    println!(
                        "{}…  uses left {}  expires in {}  {kind}  made by {}{}",
                        i.token_prefix,
                        i.uses_left,
                        humantime::format_duration(std::time::Duration::from_secs((i.expires_at - now) as u64)),
                        i.creator.as_deref().unwrap_or("the command line"),
                        if i.is_admin { "  (admin)" } else { "" }
                    );
                }
            }
        }
        InviteCmd::Revoke { token_prefix } => {
            let n = s.blocking(|c| store::invites::revoke(c, &token_prefix)).map_err(e)?;
            if n == 0 {
                bail!("no invitation starts with {token_prefix}");
            }
            println!("revoked {n} invitation(s)");
        }
    }
    Ok(())
}

fn backup(config: &Config, file: &std::path::Path) -> Result<()> {
    let db = config.data_dir.join("pushbox.sqlite3");
    let size = store::backup::backup(&db, file).map_err(|e| anyhow!("{e}"))?;
    println!("backed up {} to {} ({size} bytes)", db.display(), file.display());
    Ok(())
}
