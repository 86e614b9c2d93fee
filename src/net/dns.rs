//! The one DNS resolver set-up, shared by federation (SRV look-ups of
//! peers) and `pushbox check dns`: the system's configuration, or the
//! servers `federation.dns_servers` names.

use hickory_resolver::{
    config::{NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    TokioResolver,
};
use std::{net::SocketAddr, time::Duration};

/// How long to wait for answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// The library's defaults (federation: a slow answer is better than none).
    Default,
    /// Three seconds, two attempts (an operator waiting at a prompt).
    Quick,
}

/// A resolver asking `servers`, or the system's resolvers when the list is
/// empty. An error says why the system configuration could not be read.
pub fn resolver(servers: &[SocketAddr], patience: Patience) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
    } else {
        let servers = servers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    if patience == Patience::Quick {
        builder.options_mut().timeout = Duration::from_secs(3);
        builder.options_mut().attempts = 2;
    }
    builder.build().map_err(|e| format!("cannot set up DNS: {e}"))
}
