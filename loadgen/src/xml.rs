//! Reads an XMPP stream: bytes in, the server's header, top-level elements
//! and the stream's end out (rxml's raw parser feeding minidom's tree builder).

use anyhow::{bail, Result};
use minidom::{tree_builder::TreeBuilder, Element};
use rxml::{error::EndOrError, Parse, RawEvent, RawParser};

pub enum Ev {
    Header,
    El(Element),
    Close,
}

pub struct Reader {
    raw: RawParser,
    tree: TreeBuilder,
    depth: usize,
}

impl Reader {
    pub fn new() -> Reader {
        let options = rxml::Options {
            max_token_length: 1 << 20,
            ..Default::default()
        };
        let mut raw = <RawParser as rxml::WithOptions>::with_options(options);
        raw.set_text_buffering(true);
        Reader {
            raw,
            tree: TreeBuilder::new(),
            depth: 0,
        }
    }

    /// Parse from `buf`, consuming what was used; `None` means more bytes are needed.
    pub fn next(&mut self, buf: &mut &[u8]) -> Result<Option<Ev>> {
        loop {
            let ev = match self.raw.parse(buf, false) {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(EndOrError::NeedMoreData) => return Ok(None),
                Err(EndOrError::Error(e)) => bail!("XML from the server: {e}"),
            };
            match ev {
                RawEvent::XmlDeclaration(..) => {}
                RawEvent::ElementHeadOpen(..) | RawEvent::Attribute(..) => {
                    self.tree.process_event(ev)?;
                }
                RawEvent::ElementHeadClose(_) => {
                    self.tree.process_event(ev)?;
                    self.depth += 1;
                    if self.depth == 1 {
                        return Ok(Some(Ev::Header));
                    }
                }
                RawEvent::Text(..) => {
                    if self.depth >= 2 {
                        self.tree.process_event(ev)?;
                    }
                }
                RawEvent::ElementFoot(_) => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Some(Ev::Close));
                    }
                    self.tree.process_event(ev)?;
                    if self.depth == 1 {
                        match self.tree.unshift_child() {
                            Some(el) => return Ok(Some(Ev::El(el))),
                            None => bail!("parser lost an element"),
                        }
                    }
                }
            }
        }
    }
}

/// Escape text for an XML attribute or text node.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}
