//! The upgrade rules and the byte stream, over in-memory pipes with
//! tungstenite's own client on the other end.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A client's upgrade request to `path`, offering `protocol` if given.
fn request(path: &str, protocol: Option<&str>) -> Request {
    let mut request = format!("ws://localhost{path}")
        .into_client_request()
        .expect("a valid request");
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).expect("a valid header"),
        );
    }
    request
}

/// Both ends of an upgraded connection, the server's limited to `max`.
async fn pair(max: usize) -> (WebSocketStream<DuplexStream>, WsStream<DuplexStream>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let limits = WsLimits {
        max_message_size: max,
    };
    let (client, server) = tokio::join!(
        tokio_tungstenite::client_async(request(PATH, Some("mqtt")), client),
        accept(server, limits, TIMEOUT)
    );
    let (client, response) = client.expect("client handshake");
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol"),
        Some(&HeaderValue::from_static("mqtt"))
    );
    (client, server.expect("server handshake"))
}

/// What the client gets when it asks for `path` offering `protocol`.
async fn refused(path: &str, protocol: Option<&str>) -> (Option<u16>, Option<u16>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (client, server) = tokio::join!(
        tokio_tungstenite::client_async(request(path, protocol), client),
        accept(server, WsLimits::for_max_packet_size(1024), TIMEOUT)
    );
    let client = match client {
        Err(Error::Http(response)) => Some(response.status().as_u16()),
        _ => None,
    };
    (client, server.err().and_then(|e| e.status()))
}

#[tokio::test]
async fn only_mqtt_at_slash_mqtt_is_upgraded() {
    assert_eq!(refused("/", Some("mqtt")).await, (Some(404), Some(404)));
    assert_eq!(
        refused("/other", Some("mqtt")).await,
        (Some(404), Some(404))
    );
    assert_eq!(refused(PATH, None).await, (Some(400), Some(400)));
    assert_eq!(refused(PATH, Some("wamp")).await, (Some(400), Some(400)));
    // A list that includes mqtt is fine, and a query string is ignored.
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (client, server) = tokio::join!(
        tokio_tungstenite::client_async(request("/mqtt?x=1", Some("wamp, mqtt")), client),
        accept(server, WsLimits::for_max_packet_size(1024), TIMEOUT)
    );
    assert!(client.is_ok() && server.is_ok());
}

#[tokio::test]
async fn plain_bytes_are_no_handshake() {
    let (mut client, server) = tokio::io::duplex(1024);
    let accepting = accept(server, WsLimits::for_max_packet_size(1024), TIMEOUT);
    let connect = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0,
    ];
    client.write_all(&connect).await.expect("write");
    client.shutdown().await.expect("shutdown");
    assert!(matches!(accepting.await, Err(WsHandshakeError::Failed(_))));
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let (_client, server) = tokio::io::duplex(1024);
    let limits = WsLimits::for_max_packet_size(1024);
    let accepted = accept(server, limits, Duration::from_millis(50)).await;
    assert!(matches!(accepted, Err(WsHandshakeError::TimedOut)));
}

#[tokio::test]
async fn bytes_flow_whatever_the_message_boundaries() {
    let (mut client, mut server) = pair(1024).await;
    // One packet split over three messages, then two in one message.
    for part in [&b"\x30\x05"[..], b"\x00\x01", b"ab"] {
        client
            .send(Message::binary(part.to_vec()))
            .await
            .expect("send");
    }
    client
        .send(Message::binary(b"\xc0\x00\xc0\x00".to_vec()))
        .await
        .expect("send");
    let mut got = [0u8; 10];
    server.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"\x30\x05\x00\x01ab\xc0\x00\xc0\x00");

    // Pings are answered, and do not disturb the byte stream.
    client
        .send(Message::Ping(b"p".to_vec().into()))
        .await
        .expect("ping");
    client
        .send(Message::binary(b"\xd0\x00".to_vec()))
        .await
        .expect("send");
    let mut two = [0u8; 2];
    server.read_exact(&mut two).await.expect("read");
    assert_eq!(&two, b"\xd0\x00");
    server.write_all(b"\xd0\x00").await.expect("write");
    server.flush().await.expect("flush");
    assert!(!server.wants_write());
    assert_eq!(
        client.next().await.expect("a message").expect("no error"),
        Message::Pong(b"p".to_vec().into())
    );
    assert_eq!(
        client.next().await.expect("a message").expect("no error"),
        Message::binary(b"\xd0\x00".to_vec())
    );

    // A close ends the stream cleanly, and is answered.
    client.close(None).await.expect("close");
    assert_eq!(server.read(&mut two).await.expect("eof"), 0);
    server.shutdown().await.expect("shutdown");
    assert!(matches!(
        client.next().await,
        None | Some(Ok(Message::Close(_)))
    ));
}

/// The close code the client receives after sending `message`, and the
/// server's read result kind.
async fn closed_with(max: usize, message: Message) -> (Option<CloseCode>, io_kind::Kind) {
    let (mut client, mut server) = pair(max).await;
    client.send(message).await.expect("send");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(TIMEOUT, server.read(&mut buf))
        .await
        .expect("read in time");
    let code = match client.next().await {
        Some(Ok(Message::Close(Some(frame)))) => Some(frame.code),
        _ => None,
    };
    (code, io_kind::of(read))
}

mod io_kind {
    /// Whether a read succeeded or failed, and how.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Kind {
        Read(usize),
        Failed(std::io::ErrorKind),
    }

    pub fn of(read: std::io::Result<usize>) -> Kind {
        match read {
            Ok(n) => Kind::Read(n),
            Err(e) => Kind::Failed(e.kind()),
        }
    }
}

#[tokio::test]
async fn text_is_refused_with_1003() {
    let (code, read) = closed_with(1024, Message::text("hello")).await;
    assert_eq!(code, Some(CloseCode::Unsupported));
    assert_eq!(read, io_kind::Kind::Failed(std::io::ErrorKind::InvalidData));
}

#[tokio::test]
async fn an_oversized_message_is_refused_with_1009() {
    let (code, read) = closed_with(16, Message::binary(vec![0u8; 17])).await;
    assert_eq!(code, Some(CloseCode::Size));
    assert_eq!(read, io_kind::Kind::Failed(std::io::ErrorKind::InvalidData));
}

#[tokio::test]
async fn a_large_write_goes_out_in_bounded_messages() {
    let (mut client, mut server) = pair(1024).await;
    let data = vec![7u8; MAX_OUT_MESSAGE + 10];
    let writing = async {
        server.write_all(&data).await.expect("write");
        server.flush().await.expect("flush");
    };
    let reading = async {
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < data.len() {
            match client.next().await {
                Some(Ok(Message::Binary(payload))) => sizes.push(payload.len()),
                other => panic!("unexpected {other:?}"),
            }
        }
        sizes
    };
    let ((), sizes) = tokio::join!(writing, reading);
    assert_eq!(sizes, vec![MAX_OUT_MESSAGE, 10]);
}
