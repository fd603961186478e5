//! The application properties the 5.0 tests publish, and the check that a
//! subscriber got them unchanged (5.0 §3.3.2.3: the server forwards them
//! as published, User Properties in order with duplicates).

use anyhow::{ensure, Result};

use super::props::{id, Properties};

/// Payload Format Indicator, Content Type, Response Topic, Correlation
/// Data and User Properties (a key repeated, non-ASCII text).
pub fn application_properties() -> Properties {
    Properties::new()
        .byte(id::PAYLOAD_FORMAT_INDICATOR, 1)
        .text(id::CONTENT_TYPE, "application/json; charset=utf-8")
        .text(id::RESPONSE_TOPIC, "reply/to/me")
        .binary(id::CORRELATION_DATA, &[0x00, 0x01, 0xFE, 0xFF, b'c'])
        .user("a", "1")
        .user("b", "2")
        .user("a", "3")
        .user("ünï", "cödé")
}

/// Requires `got` to carry every property of [`application_properties`]
/// once with its value, and the User Properties in order with duplicates.
pub fn check_application_properties(got: &Properties) -> Result<()> {
    let sent = application_properties();
    for prop in [
        id::PAYLOAD_FORMAT_INDICATOR,
        id::CONTENT_TYPE,
        id::RESPONSE_TOPIC,
        id::CORRELATION_DATA,
    ] {
        ensure!(
            got.get(prop) == sent.get(prop) && got.count(prop) == 1,
            "property {prop:#04x}: sent {:?}, got {got:?}",
            sent.get(prop)
        );
    }
    ensure!(
        got.users() == sent.users(),
        "User Properties: sent {:?}, got {:?}",
        sent.users(),
        got.users()
    );
    Ok(())
}
