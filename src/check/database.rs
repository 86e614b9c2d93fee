//! `pushbox check database`: where the relay keeps its state; with
//! PostgreSQL, whether the database answers and at which schema version.

use super::{Level, Report, Section};
use crate::{config::Config, push::backend::postgres};

pub async fn check(config: &Config, r: &mut Report) {
    let s = Section::Database;
    let Some(url) = &config.relay.database else {
        r.push(
            s,
            Level::Ok,
            "relay.database",
            format!(
                "not set: the relay keeps its state in {} (one node)",
                config.data_dir.join("pushbox.sqlite3").display()
            ),
        );
        return;
    };
    // Named without the password the URL may hold.
    let target = match crate::config::relay::database_url(url) {
        Ok(c) => describe(&c),
        Err(e) => {
            r.push(s, Level::Error, "relay.database", e);
            return;
        }
    };
    match postgres::check(url, &config.relay).await {
        Ok((found, expected)) if found == expected => r.push(
            s,
            Level::Ok,
            "relay.database",
            format!("PostgreSQL {target} answers; relay schema version {found}"),
        ),
        Ok((found, expected)) if found < expected => {
            r.push(
                s,
                Level::Warning,
                "relay.database",
                format!("PostgreSQL {target} answers; relay schema version {found}, this pushbox uses {expected}"),
            );
            r.fix("start pushbox: it migrates the schema at start-up (one node at a time, under an advisory lock)");
        }
        Ok((found, expected)) => {
            r.push(
                s,
                Level::Error,
                "relay.database",
                format!(
                    "PostgreSQL {target}: relay schema version {found} is newer than this pushbox knows ({expected})"
                ),
            );
            r.fix("run the pushbox version that migrated it (or a newer one) on every node");
        }
        Err(e) => {
            r.push(
                s,
                Level::Error,
                "relay.database",
                format!("cannot use PostgreSQL {target}: {e:#}"),
            );
            r.fix("check the host, port, user, password and database in the URL, and that the server accepts this node (pg_hba.conf)");
        }
    }
}

/// `user@host:port/database`, without the password.
fn describe(c: &tokio_postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        c.get_user().unwrap_or("?"),
        c.get_dbname().unwrap_or("?")
    )
}
