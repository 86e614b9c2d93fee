//! The `pep_nodes` and `pep_items` tables: XEP-0163 personal eventing nodes,
//! their configuration and their published items.

use super::{now, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Who may read a node's items and receive its notifications (XEP-0060 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Open,
    Presence,
    Roster,
    Whitelist,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Presence => "presence",
            Access::Roster => "roster",
            Access::Whitelist => "whitelist",
        }
    }
    pub fn parse(s: &str) -> Option<Access> {
        Some(match s {
            "open" => Access::Open,
            "presence" => Access::Presence,
            "roster" => Access::Roster,
            "whitelist" => Access::Whitelist,
            _ => return None,
        })
    }
}

/// When the last item goes to a new subscriber (XEP-0060 `pubsub#send_last_published_item`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    pub fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
    pub fn parse(s: &str) -> Option<SendLast> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
}

/// A node's configuration. `max_items: None` is `max` (the server's limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub access_model: Access,
    pub persist_items: bool,
    pub max_items: Option<u32>,
    pub send_last_published_item: SendLast,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub deliver_payloads: bool,
    pub roster_groups_allowed: Vec<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub payload_type: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            access_model: Access::Presence,
            persist_items: true,
            max_items: Some(1),
            send_last_published_item: SendLast::OnSubAndPresence,
            notify_retract: true,
            notify_delete: true,
            deliver_payloads: true,
            roster_groups_allowed: vec![],
            title: None,
            description: None,
            payload_type: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    /// The serialised payload (the `<item/>`'s children).
    pub payload: String,
    pub publisher: String,
}

pub fn node(c: &Connection, account: i64, node: &str) -> Result<Option<NodeConfig>> {
    let cfg: Option<String> = c
        .query_row(
            "SELECT config FROM pep_nodes WHERE account_id=?1 AND node=?2",
            params![account, node],
            |r| r.get(0),
        )
        .optional()?;
    Ok(cfg.map(|s| serde_json::from_str(&s).unwrap_or_default()))
}

/// Every node of an account, by name.
pub fn nodes(c: &Connection, account: i64) -> Result<Vec<(String, NodeConfig)>> {
    let mut st = c.prepare_cached("SELECT node, config FROM pep_nodes WHERE account_id=?1 ORDER BY node")?;
    let rows = st.query_map(params![account], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = vec![];
    for r in rows {
        let (n, cfg) = r?;
        out.push((n, serde_json::from_str(&cfg).unwrap_or_default()));
    }
    Ok(out)
}

/// Create or reconfigure a node, then trim its items to the new limit.
pub fn put_node(c: &Connection, account: i64, node: &str, cfg: &NodeConfig, cap: u32) -> Result<()> {
    let json = serde_json::to_string(cfg).map_err(|e| super::StoreError::Other(e.to_string()))?;
    c.execute(
        "INSERT INTO pep_nodes (account_id, node, config, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(account_id, node) DO UPDATE SET config=excluded.config",
        params![account, node, json, now()],
    )?;
    let keep = if cfg.persist_items {
        cfg.max_items.unwrap_or(cap).min(cap)
    } else {
        0
    };
    trim(c, account, node, keep)
}

pub fn delete_node(c: &Connection, account: i64, node: &str) -> Result<bool> {
    c.execute(
        "DELETE FROM pep_items WHERE account_id=?1 AND node=?2",
        params![account, node],
    )?;
    Ok(c.execute(
        "DELETE FROM pep_nodes WHERE account_id=?1 AND node=?2",
        params![account, node],
    )? == 1)
}

/// Store an item (replacing one with the same id, which becomes the newest)
/// and keep only the newest `keep`.
pub fn publish(c: &mut Connection, account: i64, node: &str, item: &Item, keep: u32) -> Result<()> {
    let tx = c.transaction()?;
    tx.execute(
        "DELETE FROM pep_items WHERE account_id=?1 AND node=?2 AND item_id=?3",
        params![account, node, item.id],
    )?;
    tx.execute(
        "INSERT INTO pep_items (account_id, node, item_id, payload, publisher, published_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![account, node, item.id, item.payload, item.publisher, now()],
    )?;
    trim(&tx, account, node, keep)?;
    tx.commit()?;
    Ok(())
}

fn trim(c: &Connection, account: i64, node: &str, keep: u32) -> Result<()> {
    c.execute(
        "DELETE FROM pep_items WHERE account_id=?1 AND node=?2 AND seq NOT IN
           (SELECT seq FROM pep_items WHERE account_id=?1 AND node=?2 ORDER BY seq DESC LIMIT ?3)",
        params![account, node, keep],
    )?;
    Ok(())
}

/// Remove one item; false if it did not exist.
pub fn retract(c: &Connection, account: i64, node: &str, id: &str) -> Result<bool> {
    Ok(c.execute(
        "DELETE FROM pep_items WHERE account_id=?1 AND node=?2 AND item_id=?3",
        params![account, node, id],
    )? == 1)
}

pub fn purge(c: &Connection, account: i64, node: &str) -> Result<()> {
    c.execute(
        "DELETE FROM pep_items WHERE account_id=?1 AND node=?2",
        params![account, node],
    )?;
    Ok(())
}

/// The newest `max` items (all when `None`), oldest first.
pub fn items(c: &Connection, account: i64, node: &str, max: Option<u32>) -> Result<Vec<Item>> {
    let mut st = c.prepare_cached(
        "SELECT item_id, payload, publisher FROM
           (SELECT seq, item_id, payload, publisher FROM pep_items WHERE account_id=?1 AND node=?2
            ORDER BY seq DESC LIMIT ?3)
         ORDER BY seq",
    )?;
    let limit = max.map(i64::from).unwrap_or(-1);
    let rows = st.query_map(params![account, node, limit], |r| {
        Ok(Item {
            id: r.get(0)?,
            payload: r.get(1)?,
            publisher: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Items by id (those that exist), oldest first.
pub fn items_by_id(c: &Connection, account: i64, node: &str, ids: &[String]) -> Result<Vec<Item>> {
    let all = items(c, account, node, None)?;
    Ok(all.into_iter().filter(|i| ids.contains(&i.id)).collect())
}
