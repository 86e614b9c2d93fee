//! The command line, as clap definitions and nothing else: `main.rs` runs
//! it, and `build.rs` loads this file too (as a module) to write the man page and shell
//! completions, so that they never drift from the real CLI and `cargo deb`
//! alone builds the package. It must not name anything of the pushbox
//! library.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "pushbox",
    version,
    about = "XMPP server, push relay and ACME certificates in one daemon"
)]
pub struct Cli {
    /// Configuration file [default: $PUSHBOX_CONFIG, ./pushbox.toml, /etc/pushbox/pushbox.toml]
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve,
    /// Check configuration, DNS, certificates and ports; say what to fix.
    /// Exit status: 0 all well, 1 a check failed, 2 configuration problems.
    Check {
        /// Only this part (default: all of them).
        #[arg(value_enum)]
        what: Option<CheckSection>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage XMPP accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage invitations (XEP-0401).
    #[command(subcommand)]
    Invite(InviteCmd),
    /// Manage group chat rooms (XEP-0045) on the `[muc]` service.
    #[command(subcommand)]
    Room(RoomCmd),
    /// Copy the database to FILE, consistently, while the daemon runs.
    Backup {
        /// Where to write the copy (must not exist yet).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create an account.
    Add {
        /// Username or JID.
        user: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// Make the account an administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Delete an account and everything stored for it.
    Del { user: String },
    /// Change an account's password.
    Passwd {
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List,
    /// List the clients an account logs in from (SASL2 user agents) and
    /// when their FAST login tokens expire.
    Devices { user: String },
    /// End one client's FAST login tokens and forget it; DEVICE is its id
    /// (as `devices` shows it) or the start of it.
    Revoke { user: String, device: String },
}

#[derive(Subcommand)]
pub enum InviteCmd {
    /// Create an invitation link.
    Create {
        /// The new account becomes an administrator.
        #[arg(long)]
        admin: bool,
        /// How long the invitation stays valid.
        #[arg(long, default_value = "7d")]
        expires: String,
        /// How many accounts it can create.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List invitations that are still valid.
    List,
    /// Revoke an invitation by the first characters of its token.
    Revoke { token_prefix: String },
}

#[derive(Subcommand)]
pub enum RoomCmd {
    /// List rooms with their kind, owners and number of members.
    List,
    /// Create a configured room.
    Create {
        /// The room's local part (`club` for club@groups.<domain>).
        name: String,
        /// Its first owner (a JID; a bare username means a local account).
        #[arg(long)]
        owner: String,
        /// A display name.
        #[arg(long)]
        title: Option<String>,
        /// A private group: members-only and non-anonymous (what OMEMO needs).
        #[arg(long)]
        private: bool,
        /// List it in the service's room directory.
        #[arg(long)]
        public: bool,
    },
    /// Destroy a room with its members and archive.
    Destroy { name: String },
}

/// The parts of `pushbox check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckSection {
    /// The configuration file and its combinations.
    Config,
    /// A/AAAA records of the domain and subdomains, SRV records against the listeners.
    Dns,
    /// Names covered, days to expiry and chain of the certificate.
    Certs,
    /// Whether each listener can bind or is already listening.
    Ports,
    /// Where the relay keeps its state; PostgreSQL's connection and schema version.
    Database,
}
