//! A minimal, blocking HTTP/1.0 GET: enough to read `/metrics` from our
//! binaries and to call Prometheus's HTTP API, without an HTTP client crate.
//!
//! HTTP/1.0 with `Connection: close` makes both servers (hyper in ours, Go's
//! net/http in Prometheus) send a plain body ended by closing the
//! connection: no chunked encoding to decode.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// Bound on connecting, and on each read or write of one request.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

/// Sends `GET path_and_query` to `addr` and reads the whole response.
pub fn get(addr: SocketAddr, path_and_query: &str) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to http://{addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let request = format!(
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending GET {path_and_query} to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path_and_query} from {addr}"))?;
    parse_response(&raw).with_context(|| format!("GET http://{addr}{path_and_query}"))
}

/// Splits a raw HTTP/1.x response into status and body.
fn parse_response(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("response without a header end: {text:.200}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

/// Percent-encodes a query-string component (RFC 3986 unreserved kept).
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let response = parse_response(b"HTTP/1.0 200 OK\r\nA: b\r\n\r\nhello\r\n").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "hello\r\n");
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode_component(r#"up{job="x"} [1m]"#),
            "up%7Bjob%3D%22x%22%7D%20%5B1m%5D"
        );
    }
}
