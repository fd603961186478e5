//! Arbitrary bytes through the node's inbound path, as a connection reads
//! them: the first frame must start like a CONNECT (`check_connect_start`),
//! every frame is delimited by `parse_header` with a size limit, then
//! decoded from the read buffer (`protocol::decode_first` for the CONNECT:
//! the shared CONNECT rules and rmqtt-codec; `protocol::decode` for every
//! following frame until the input runs out or one is refused). The frames
//! after the CONNECT are decoded twice: with the CONNECT's version, as a
//! connection does today, and as MQTT 5.0, which the node decodes but does
//! not serve yet. Whatever the bytes, the outcome is a packet or an error,
//! never a panic, and each decode takes exactly its packet off the buffer.
#![no_main]

use astramq_node::protocol::frame::{check_connect_start, parse_header};
use astramq_node::protocol::{decode, decode_first, Inbound, Version};
use astramq_node::router::topic::{is_valid_filter, is_valid_topic_name, TopicLimits};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Small enough that the size limit is hit by the fuzzer, large enough for
/// every packet it builds.
const MAX_PACKET_SIZE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    run(data, None);
    run(data, Some(Version::Mqtt5));
});

/// One connection's worth of `data`; `later` overrides the version the
/// packets after the CONNECT are decoded with.
fn run(data: &[u8], later: Option<Version>) {
    let mut buf = BytesMut::from(data);
    let limits = TopicLimits::default();
    let mut version = None;
    loop {
        if version.is_none() && check_connect_start(&buf).is_err() {
            return;
        }
        let header = match parse_header(&buf, MAX_PACKET_SIZE) {
            Ok(Some(header)) => header,
            Ok(None) | Err(_) => return,
        };
        assert!(header.packet_len() <= MAX_PACKET_SIZE);
        assert!((2..=5).contains(&header.header_len));
        if buf.len() < header.packet_len() {
            return; // the connection would wait for more bytes
        }
        let left = buf.len() - header.packet_len();
        let packet = match version {
            None => decode_first(&header, &mut buf).map(Inbound::Connect),
            Some(version) => decode(version, &header, &mut buf),
        };
        let packet = match packet {
            Ok(packet) => packet,
            Err(_) => return, // the connection is closed
        };
        assert_eq!(buf.len(), left, "a decode must take exactly its packet");
        if let (None, Inbound::Connect(connect)) = (version, &packet) {
            version = Some(later.unwrap_or(connect.version));
        }
        // What the session does next with client strings must not panic
        // either.
        match &packet {
            Inbound::Connect(connect) => {
                if let Some(will) = &connect.will {
                    let _ = is_valid_topic_name(&will.topic) && limits.check(&will.topic).is_ok();
                }
            }
            Inbound::Publish(publish) => {
                assert!(publish.payload.len() <= header.packet_len());
                let _ = is_valid_topic_name(&publish.topic) && limits.check(&publish.topic).is_ok();
            }
            Inbound::Subscribe { filters, v5, .. } => {
                assert!(!filters.is_empty(), "an empty SUBSCRIBE must be refused");
                if let Some(v5) = v5 {
                    assert_eq!(v5.options.len(), filters.len());
                }
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
}
