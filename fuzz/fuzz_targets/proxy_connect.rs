//! Arbitrary bytes through the proxy's CONNECT reader: `frame_len` delimits
//! the first packet (with a size limit), `parse_connect` parses it. Never a
//! panic, and what `frame_len` delimits is inside the buffer and the limit.
#![no_main]

use astramq_proxy::connect::{frame_len, parse_connect, Reject};
use libfuzzer_sys::fuzz_target;

const MAX_CONNECT_SIZE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The whole buffer as one packet, whatever its header says.
    let whole = parse_connect(data);
    match frame_len(data, MAX_CONNECT_SIZE) {
        Ok(Some(len)) => {
            assert!(len <= data.len() && len <= MAX_CONNECT_SIZE);
            let parsed = parse_connect(&data[..len]);
            if len == data.len() {
                assert_eq!(parsed, whole);
            }
            if let Ok(info) = parsed {
                assert!(matches!(info.level, 3..=5));
                assert!(!info.client_id.contains('\0'));
            }
        }
        Ok(None) => {
            // More bytes needed: the buffer cannot be a whole CONNECT.
            assert!(data.len() < MAX_CONNECT_SIZE);
        }
        Err(Reject::NotConnect(byte)) => assert_ne!(byte >> 4, 1),
        Err(_) => {}
    }
});
