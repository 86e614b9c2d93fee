//! Fuzz target: STUN messages and ChannelData as the TURN server reads them
//! from any UDP sender: parsing, attribute access, XOR addresses, integrity
//! checks and stream framing never panic, and what parses is the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushbox::turn::stun::{self, attr, Message};

fuzz_target!(|data: &[u8]| {
    let _ = stun::header(data);
    if let Some(Ok(len)) = stun::frame_len(data) {
        assert!(len >= 4);
    }
    if let Some((ch, d)) = stun::parse_channel_data(data) {
        assert!((0x4000..=0x7FFF).contains(&ch));
        assert!(d.len() + 4 <= data.len());
    }
    if let Ok(m) = Message::parse(data) {
        assert_eq!(stun::HEADER_LEN + usize::from(u16::from_be_bytes([data[2], data[3]])), data.len());
        for t in [attr::XOR_PEER_ADDRESS, attr::XOR_MAPPED_ADDRESS, attr::XOR_RELAYED_ADDRESS] {
            for v in m.all(t) {
                let _ = m.xor_address(v);
            }
        }
        let _ = m.text(attr::USERNAME);
        let _ = m.u32(attr::LIFETIME);
        let _ = m.unknown_required();
        let _ = m.verify(b"key");
    }
});
