//! XEP-0050 ad-hoc commands on the server's domain: the command list in
//! disco#items (node `http://jabber.org/protocol/commands`), each command
//! node's disco#info, and `<command/>` requests handed to the module that
//! offers the node. Commands are for local accounts only; a command marked
//! `admin_only` is listed to and run for administrators only. Modules offer
//! commands with [`Module::commands`] and run them in
//! [`Module::run_command`]; this file names none of them.

use super::{BoxFuture, IqCtx, IqReply, IqRoute, Module, Target};
use crate::{
    store,
    xmpp::{
        ns::{COMMANDS, DATA, DISCO_INFO, DISCO_ITEMS},
        stanza::{Condition, StanzaError},
        xml::{elem, ElementExt},
        Server,
    },
};
use jid::Jid;
use minidom::Element;
use std::sync::Arc;

/// One command a module offers on the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub node: &'static str,
    pub name: &'static str,
    /// Listed to and run for administrators only.
    pub admin_only: bool,
}

pub struct Adhoc;

impl Module for Adhoc {
    fn name(&self) -> &'static str {
        "adhoc"
    }
    fn server_features(&self) -> &'static [&'static str] {
        &[COMMANDS]
    }
    fn iqs(&self) -> &'static [IqRoute] {
        &[IqRoute {
            name: "command",
            ns: COMMANDS,
            target: Target::Server,
        }]
    }
    fn handle_iq<'a>(&'a self, ctx: IqCtx<'a>) -> BoxFuture<'a, IqReply> {
        Box::pin(async move {
            if !ctx.set {
                return Err(Condition::BadRequest.into());
            }
            let node = ctx.payload.attr("node").ok_or(Condition::BadRequest)?.to_string();
            let Some((module, command)) = find(ctx.server, &node) else {
                return Err(StanzaError::new(Condition::ItemNotFound, "no such command"));
            };
            match role(ctx.server, ctx.from).await? {
                Role::Stranger => {
                    return Err(StanzaError::new(
                        Condition::Forbidden,
                        format!("commands here are for accounts of {}", ctx.server.domain()),
                    ))
                }
                Role::User if command.admin_only => {
                    return Err(StanzaError::new(
                        Condition::Forbidden,
                        "this command is for administrators",
                    ))
                }
                _ => {}
            }
            if ctx.payload.attr("action") == Some("cancel") {
                return Ok(Some(
                    elem("command", COMMANDS)
                        .with("node", node)
                        .with_opt("sessionid", ctx.payload.attr("sessionid").map(str::to_string))
                        .with("status", "canceled"),
                ));
            }
            let module = module.clone();
            module.run_command(ctx, &node).await
        })
    }
}

/// Who is asking, for the command list and its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not an account of this domain.
    Stranger,
    User,
    Admin,
}

async fn role(server: &Server, from: &Jid) -> Result<Role, StanzaError> {
    if from.domain().as_str() != server.domain() {
        return Ok(Role::Stranger);
    }
    let Some(user) = from.node().map(|n| n.to_string()) else {
        return Ok(Role::Stranger);
    };
    let account = server
        .store
        .call(move |c| store::accounts::get(c, &user))
        .await
        .map_err(super::internal)?;
    Ok(match account {
        Some(a) if a.is_admin => Role::Admin,
        Some(_) => Role::User,
        None => Role::Stranger,
    })
}

/// The module offering `node`, and the command.
fn find<'s>(server: &'s Server, node: &str) -> Option<(&'s Arc<dyn Module>, Command)> {
    server
        .modules
        .iter()
        .find_map(|m| m.commands(server).into_iter().find(|c| c.node == node).map(|c| (m, c)))
}

/// disco#items of the domain's command node: the commands `from` may run.
pub async fn items(server: &Server, from: &Jid) -> Result<Element, StanzaError> {
    let mut q = elem("query", DISCO_ITEMS).with("node", COMMANDS);
    let role = role(server, from).await?;
    if role == Role::Stranger {
        return Ok(q);
    }
    for m in server.modules.iter() {
        for c in m.commands(server) {
            if c.admin_only && role != Role::Admin {
                continue;
            }
            q.append_child(
                elem("item", DISCO_ITEMS)
                    .with("jid", server.domain().to_string())
                    .with("node", c.node)
                    .with("name", c.name),
            );
        }
    }
    Ok(q)
}

/// disco#info of a command node on the domain, `None` when no module offers it.
pub fn info(server: &Server, node: &str) -> Option<Element> {
    let (_, c) = find(server, node)?;
    Some(
        elem("query", DISCO_INFO)
            .with("node", node.to_string())
            .child(
                elem("identity", DISCO_INFO)
                    .with("category", "automation")
                    .with("type", "command-node")
                    .with("name", c.name),
            )
            .child(elem("feature", DISCO_INFO).with("var", COMMANDS))
            .child(elem("feature", DISCO_INFO).with("var", DATA)),
    )
}

/// A completed command's answer with a result form of `fields`
/// (`(var, label, value)`) and optional notes (`(type, text)`).
pub fn completed(
    node: &str,
    sessionid: Option<&str>,
    title: &str,
    fields: &[(&str, &str, String)],
    notes: &[(&str, String)],
) -> Element {
    let mut cmd = elem("command", COMMANDS)
        .with("node", node.to_string())
        .with(
            "sessionid",
            sessionid
                .map(str::to_string)
                .unwrap_or_else(crate::xmpp::stream::new_id),
        )
        .with("status", "completed");
    for (t, text) in notes {
        cmd.append_child(elem("note", COMMANDS).with("type", *t).text_child(text.clone()));
    }
    let mut x = elem("x", DATA)
        .with("type", "result")
        .child(elem("title", DATA).text_child(title));
    for (var, label, value) in fields {
        x.append_child(
            elem("field", DATA)
                .with("var", *var)
                .with("label", *label)
                .with("type", "text-single")
                .child(elem("value", DATA).text_child(value.clone())),
        );
    }
    cmd.append_child(x);
    cmd
}
