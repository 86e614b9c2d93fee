//! IQs the server itself sends (XEP-0357 publishes, disco queries): their
//! results and errors come back through the router and are handed to the
//! waiting task here.

use minidom::Element;
use std::{collections::HashMap, sync::Mutex, time::Duration};
use tokio::sync::oneshot;

#[derive(Default)]
pub struct IqTracker {
    // std Mutex: map operations only, never held across an await.
    pending: Mutex<HashMap<String, oneshot::Sender<Element>>>,
}

impl IqTracker {
    /// A fresh id to put on an outgoing IQ, and the receiver of its answer.
    pub fn register(&self) -> (String, oneshot::Receiver<Element>) {
        let r: [u8; 12] = rand::random();
        let id = format!("pb-{}", r.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        (id, rx)
    }

    /// Called by the router for IQ results and errors addressed to the
    /// server or to a bare JID; true when it was an answer we waited for.
    pub fn resolve(&self, iq: &Element) -> bool {
        let Some(id) = iq.attr("id") else { return false };
        let tx = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        match tx {
            Some(tx) => {
                let _ = tx.send(iq.clone());
                true
            }
            None => false,
        }
    }

    /// Wait for an answer; forget the id on timeout.
    pub async fn wait(&self, id: &str, rx: oneshot::Receiver<Element>, timeout: Duration) -> Option<Element> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(el)) => Some(el),
            _ => {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
                None
            }
        }
    }
}
