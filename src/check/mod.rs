//! `pushbox check [config|dns|certs|ports|web|database] [--json]`: finds
//! what stands between the configuration and a working server
//! (configuration problems, DNS records, certificates, ports, WebSocket
//! discovery, the relay's database), each finding with what to fix. The exit
//! status is 2 for configuration problems, 1 when any other check fails.

mod certs;
mod config;
mod database;
mod dns;
mod ports;
mod web;

use crate::config::Config;
use serde::Serialize;
use std::{fmt::Write as _, path::Path};

/// One part of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// The configuration file and its combinations.
    Config,
    /// A/AAAA records of the domain and subdomains, SRV records against the listeners.
    Dns,
    /// Names covered, days to expiry and chain of the certificate.
    Certs,
    /// Whether each listener can bind or is already listening.
    Ports,
    /// XEP-0156 host-meta and the WebSocket endpoint it names, fetched like a web client would.
    Web,
    /// Where the relay keeps its state; PostgreSQL's connection and schema version.
    Database,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// One finding: what was looked at, what was found, and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub section: Section,
    pub level: Level,
    pub subject: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Every finding of one run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, section: Section, level: Level, subject: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding {
            section,
            level,
            subject: subject.into(),
            message: message.into(),
            fix: None,
        });
    }

    fn fix(&mut self, fix: impl Into<String>) {
        if let Some(f) = self.findings.last_mut() {
            f.fix = Some(fix.into());
        }
    }

    fn finish(mut self) -> Report {
        self.errors = self.findings.iter().filter(|f| f.level == Level::Error).count();
        self.warnings = self.findings.iter().filter(|f| f.level == Level::Warning).count();
        self.ok = self.errors == 0;
        self
    }

    /// Plain text, one line per finding and an indented line with the fix.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut section = None;
        for f in &self.findings {
            if section != Some(f.section) {
                section = Some(f.section);
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_value(f.section).unwrap().as_str().unwrap_or("")
                );
            }
            let level = match f.level {
                Level::Ok => "ok     ",
                Level::Warning => "WARNING",
                Level::Error => "ERROR  ",
            };
            let _ = writeln!(out, "  {level} {}: {}", f.subject, f.message);
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "          fix: {fix}");
            }
        }
        let _ = writeln!(
            out,
            "{}: {} error(s), {} warning(s)",
            if self.ok { "OK" } else { "PROBLEMS FOUND" },
            self.errors,
            self.warnings
        );
        out
    }
}

/// The `pushbox check` command: load the configuration from `path`, run
/// `what` (everything when `None`), print, and return the exit status.
pub fn main(path: Option<&Path>, what: Option<Section>, json: bool) -> u8 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            if json {
                let mut r = Report::default();
                for p in &problems.0 {
                    r.push(
                        Section::Config,
                        Level::Error,
                        format!("{} {}", p.source, p.key),
                        &p.message,
                    );
                }
                println!("{}", serde_json::to_string_pretty(&r.finish()).unwrap_or_default());
            } else {
                eprint!("pushbox: {problems}");
            }
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pushbox: {e}");
            return 1;
        }
    };
    let sections = match what {
        Some(s) => vec![s],
        None => vec![
            Section::Config,
            Section::Dns,
            Section::Certs,
            Section::Ports,
            Section::Web,
            Section::Database,
        ],
    };
    let report = rt.block_on(run(&config, &sections));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", report.to_text());
    }
    u8::from(!report.ok)
}

/// Run the given sections against a loaded configuration.
pub async fn run(config: &Config, sections: &[Section]) -> Report {
    let mut r = Report::default();
    for s in sections {
        match s {
            Section::Config => config::check(config, &mut r),
            Section::Dns => dns::check(config, &mut r).await,
            Section::Certs => certs::check(config, &mut r),
            Section::Ports => ports::check(config, &mut r).await,
            Section::Web => web::check(config, &mut r).await,
            Section::Database => database::check(config, &mut r).await,
        }
    }
    r.finish()
}
