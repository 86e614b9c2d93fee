//! The XMPP server: wire format, streams, client connections, routing and
//! feature modules.

pub mod c2s;
pub mod component;
pub mod forms;
pub mod iq_tracker;
pub mod modules;
pub mod ns;
pub mod offline;
pub mod presence;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod services;
pub mod sessions;
pub mod stanza;
pub mod starttls;
pub mod stream;
pub mod xml;
pub mod xml_write;

pub use server::Server;
