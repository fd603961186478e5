//! Just enough DER to read a certificate's subject CN.
//!
//! The certificate has already been verified by rustls against the client
//! CA when this runs, but it is still parsed defensively: every length is
//! bounds-checked and anything unexpected yields `None`, never a panic.
//!
//! X.509: `Certificate ::= SEQUENCE { tbsCertificate, .. }`,
//! `TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber,
//! signature, issuer, validity, subject, .. }`, and a `Name` is a SEQUENCE
//! of SETs of `SEQUENCE { type OID, value }`.

/// DER tag of a SEQUENCE.
const SEQUENCE: u8 = 0x30;
/// DER tag of a SET.
const SET: u8 = 0x31;
/// DER tag of an OBJECT IDENTIFIER.
const OID: u8 = 0x06;
/// The explicit `[0]` tag of the version field.
const VERSION: u8 = 0xa0;
/// The content of OID 2.5.4.3, commonName.
const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// The first commonName in the subject of the DER certificate `cert`,
/// if it is a UTF-8, printable, IA5 or T.61 string.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (mut names, _) = expect(rest, SEQUENCE)?;
    while !names.is_empty() {
        let (set, next) = expect(names, SET)?;
        names = next;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, next) = expect(attributes, SEQUENCE)?;
            attributes = next;
            let (oid, value) = expect(attribute, OID)?;
            if oid != COMMON_NAME {
                continue;
            }
            let (tag, text, _) = element(value)?;
            // UTF8String, PrintableString, T61String, IA5String.
            if matches!(tag, 0x0c | 0x13 | 0x14 | 0x16) {
                return String::from_utf8(text.to_vec()).ok();
            }
            return None;
        }
    }
    None
}

/// The content of the element at the start of `input` if its tag is
/// `tag`, and what follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = element(input)?;
    (found == tag).then_some((content, rest))
}

/// The tag, content and remainder of the DER element at the start of
/// `input` (single-byte tags; definite lengths of up to four bytes).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, after_tag) = input.split_first()?;
    let (&first, after_length) = after_tag.split_first()?;
    let (length, body) = if first < 0x80 {
        (usize::from(first), after_length)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || after_length.len() < count {
            return None;
        }
        let (bytes, body) = after_length.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, body)
    };
    if body.len() < length {
        return None;
    }
    let (content, rest) = body.split_at(length);
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_garbage_input_is_none_not_a_panic() {
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x30, 0x02, 0x30, 0x00]), None);
        for length in 0..=255u8 {
            let _ = common_name(&[0x30, length, 0x30, length, 0xa0, 0x01]);
        }
    }
}
