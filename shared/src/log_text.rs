//! Making text from outside safe to put in a log line.
//!
//! Client ids, user names and topics are chosen by whoever connects: up to
//! 64 KiB each, newlines and terminal escapes included. Logged as they are,
//! one connection could write megabytes of logs or forge log lines.
//! [`untrusted`] bounds such a string to [`MAX_LOGGED_CHARS`] characters
//! and escapes it (Rust's `escape_debug`: control characters, quotes and
//! backslashes become `\n`, `\u{1b}`, `\"` ...), without allocating.
//! [`redact_url`] hides the password in a URL such as `redis://:pw@host`.
//!
//! Guaranteed: the output is one line, at most `MAX_LOGGED_CHARS` escaped
//! characters plus a short marker saying how many bytes were left out. Not
//! guaranteed: that two different inputs log differently (a cut keeps only
//! the start).

use std::fmt;

/// Characters of a client-supplied string kept in a log line.
pub const MAX_LOGGED_CHARS: usize = 128;

/// A client-supplied string, displayed truncated and escaped.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(&'a str);

/// Wraps `text` for logging: `tracing::info!(client_id = %untrusted(id))`.
pub fn untrusted(text: &str) -> Untrusted<'_> {
    Untrusted(text)
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (count, (at, c)) in self.0.char_indices().enumerate() {
            if count == MAX_LOGGED_CHARS {
                return write!(f, "…(+{} bytes)", self.0.len() - at);
            }
            write!(f, "{}", c.escape_debug())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// `url` with its password replaced by `***`, for logs and error
/// messages: the part between `user:` and the last `@`
/// (`redis://:pw@host`), and the value of a `pass` or `password` query
/// parameter (`redis+unix:///sock?pass=pw`). Text that is not
/// `scheme://...` is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@` ends the user info even when an unescaped password
    // holds `@` or `/` itself.
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key @ ("pass" | "password"), _)) => format!("{key}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_escaped_only() {
        assert_eq!(untrusted("sensor-1").to_string(), "sensor-1");
        assert_eq!(
            untrusted("a\nINFO forged\u{1b}[2J\"").to_string(),
            "a\\nINFO forged\\u{1b}[2J\\\""
        );
        assert_eq!(format!("{:?}", untrusted("x")), "\"x\"");
    }

    #[test]
    fn long_text_is_cut_with_a_marker() {
        let long = "é".repeat(70_000);
        let shown = untrusted(&long).to_string();
        assert!(shown.starts_with(&"é".repeat(MAX_LOGGED_CHARS)));
        assert!(shown.ends_with(&format!("…(+{} bytes)", (70_000 - 128) * 2)));
        assert!(shown.chars().count() < MAX_LOGGED_CHARS + 20);
        assert_eq!(untrusted(&"a".repeat(128)).to_string(), "a".repeat(128));
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("redis://:s3cret@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:p@ss@db.example/1?x=y"),
            "rediss://app:***@db.example/1?x=y"
        );
        assert_eq!(redact_url("redis://:a/b@db"), "redis://:***@db");
        assert_eq!(
            redact_url("redis+unix:///run/r.sock?db=1&pass=pw"),
            "redis+unix:///run/r.sock?db=1&pass=***"
        );
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
        assert_eq!(redact_url("redis://user@db"), "redis://user@db");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
