//! Arbitrary bytes through the node's inbound path, as a connection reads
//! them: the first frame must start like a CONNECT (`check_connect_start`),
//! every frame is delimited by `parse_header` with a size limit, then
//! validated and decoded (`protocol::decode`), CONNECT first and then every
//! following frame until the input runs out or one is refused. Whatever the
//! bytes, the outcome is a packet or an error, never a panic.
#![no_main]

use astramq_node::protocol::frame::{check_connect_start, parse_header};
use astramq_node::protocol::{decode, Inbound};
use astramq_node::router::topic::{is_valid_filter, is_valid_topic_name, TopicLimits};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Small enough that the size limit is hit by the fuzzer, large enough for
/// every packet it builds.
const MAX_PACKET_SIZE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut rest = Bytes::copy_from_slice(data);
    let limits = TopicLimits::default();
    let mut first = true;
    loop {
        if first && check_connect_start(&rest).is_err() {
            return;
        }
        let header = match parse_header(&rest, MAX_PACKET_SIZE) {
            Ok(Some(header)) => header,
            Ok(None) | Err(_) => return,
        };
        assert!(header.packet_len() <= MAX_PACKET_SIZE);
        assert!((2..=5).contains(&header.header_len));
        if rest.len() < header.packet_len() {
            return; // the connection would wait for more bytes
        }
        let frame = rest.split_to(header.packet_len());
        let packet = match decode(&header, &frame) {
            Ok(packet) => packet,
            Err(_) => return, // the connection is closed
        };
        if first && !matches!(packet, Inbound::Connect(_)) {
            return; // the first packet must be CONNECT
        }
        first = false;
        // What the session does next with client strings must not panic
        // either.
        match &packet {
            Inbound::Connect(connect) => {
                if let Some(will) = &connect.will {
                    let _ = is_valid_topic_name(&will.topic) && limits.check(&will.topic).is_ok();
                }
            }
            Inbound::Publish(publish) => {
                assert!(publish.payload.len() <= frame.len());
                let _ = is_valid_topic_name(&publish.topic) && limits.check(&publish.topic).is_ok();
            }
            Inbound::Subscribe { filters, .. } => {
                assert!(!filters.is_empty(), "an empty SUBSCRIBE must be refused");
                for (filter, _) in filters {
                    let _ = is_valid_filter(filter) && limits.check(filter).is_ok();
                }
            }
            Inbound::Unsubscribe { filters, .. } => {
                assert!(!filters.is_empty(), "an empty UNSUBSCRIBE must be refused");
                for filter in filters {
                    let _ = is_valid_filter(filter);
                }
            }
            _ => {}
        }
    }
});
