//! [`WsClient`]: a byte-level MQTT client over WebSocket (optionally
//! inside TLS), independent of the broker's code: tungstenite's client side
//! for the upgrade and frames, rustls for TLS, [`crate::wire`] for MQTT.
//!
//! Each [`WsClient::send`] is one binary message, so a test decides how
//! MQTT packets fall on message boundaries; received messages are joined
//! into one byte stream before packets are parsed. Every read is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::wire::{self, kind, ConnAck, Connect, Publish, RawPacket};
use crate::within;

/// What the client runs over: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how to upgrade.
#[derive(Clone)]
pub struct Upgrade<'a> {
    /// The server's address.
    pub addr: SocketAddr,
    /// The request path (`/mqtt` is the one served).
    pub path: &'a str,
    /// The `Sec-WebSocket-Protocol` offered, if any.
    pub protocol: Option<&'a str>,
    /// The CA (PEM) to trust for TLS (`wss`), or `None` for plain `ws`.
    pub tls_ca: Option<&'a str>,
}

impl<'a> Upgrade<'a> {
    /// `ws://addr/mqtt` with subprotocol `mqtt`.
    pub fn ws(addr: SocketAddr) -> Upgrade<'a> {
        Upgrade {
            addr,
            path: "/mqtt",
            protocol: Some("mqtt"),
            tls_ca: None,
        }
    }

    /// `wss://localhost:port/mqtt` with subprotocol `mqtt`, trusting `ca`.
    pub fn wss(addr: SocketAddr, ca: &'a str) -> Upgrade<'a> {
        Upgrade {
            tls_ca: Some(ca),
            ..Upgrade::ws(addr)
        }
    }
}

/// How an upgrade attempt ended.
#[derive(Debug)]
pub enum Upgraded {
    /// Switched to WebSocket.
    Open(Box<WsClient>),
    /// Answered with an HTTP error status.
    Refused(u16),
}

/// An MQTT connection over WebSocket.
pub struct WsClient {
    /// The WebSocket connection.
    ws: WebSocketStream<Box<dyn Io>>,
    /// Bytes received that do not yet form a complete packet.
    buffer: Vec<u8>,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").finish_non_exhaustive()
    }
}

impl WsClient {
    /// Upgrades as `upgrade` says, reporting an HTTP refusal as such.
    pub async fn try_open(upgrade: Upgrade<'_>) -> Result<Upgraded> {
        let tcp = within("TCP connect", TcpStream::connect(upgrade.addr)).await??;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match upgrade.tls_ca {
            None => Box::new(tcp),
            Some(ca) => Box::new(tls_connect(tcp, ca).await?),
        };
        let scheme = if upgrade.tls_ca.is_some() {
            "wss"
        } else {
            "ws"
        };
        let mut request = format!(
            "{scheme}://localhost:{}{}",
            upgrade.addr.port(),
            upgrade.path
        )
        .into_client_request()?;
        if let Some(protocol) = upgrade.protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocol)?);
        }
        match within(
            "WebSocket upgrade",
            tokio_tungstenite::client_async(request, stream),
        )
        .await?
        {
            Ok((ws, _response)) => Ok(Upgraded::Open(Box::new(WsClient {
                ws,
                buffer: Vec::new(),
            }))),
            Err(WsError::Http(response)) => Ok(Upgraded::Refused(response.status().as_u16())),
            Err(error) => Err(error).context("WebSocket upgrade"),
        }
    }

    /// Upgrades, requiring success.
    pub async fn open(upgrade: Upgrade<'_>) -> Result<WsClient> {
        match WsClient::try_open(upgrade).await? {
            Upgraded::Open(client) => Ok(*client),
            Upgraded::Refused(status) => bail!("upgrade refused with HTTP {status}"),
        }
    }

    /// Upgrades, sends `connect` and returns the CONNACK.
    pub async fn handshake(upgrade: Upgrade<'_>, connect: &Connect) -> Result<(WsClient, ConnAck)> {
        let mut client = WsClient::open(upgrade).await?;
        client.send(&connect.encode()).await?;
        let connack = client
            .recv()
            .await
            .context("waiting for CONNACK")?
            .connack()?;
        Ok((client, connack))
    }

    /// Upgrades and connects, requiring CONNACK 0.
    pub async fn connected(upgrade: Upgrade<'_>, connect: &Connect) -> Result<WsClient> {
        let (client, connack) = WsClient::handshake(upgrade, connect).await?;
        ensure!(
            connack.code == 0,
            "CONNACK refused with code {}",
            connack.code
        );
        Ok(client)
    }

    /// Sends `bytes` as one binary message.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        within(
            "WebSocket send",
            self.ws.send(Message::binary(bytes.to_vec())),
        )
        .await??;
        Ok(())
    }

    /// Sends any message (a text message, say).
    pub async fn send_message(&mut self, message: Message) -> Result<()> {
        within("WebSocket send", self.ws.send(message)).await??;
        Ok(())
    }

    /// Reads the next MQTT packet within [`crate::TIMEOUT`].
    pub async fn recv(&mut self) -> Result<RawPacket> {
        within("an MQTT packet over WebSocket", async {
            loop {
                if let Some((packet, used)) = RawPacket::parse(&self.buffer)? {
                    self.buffer.drain(..used);
                    return Ok(packet);
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => self.buffer.extend_from_slice(&bytes),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => bail!("no packet: the server sent {other:?}"),
                }
            }
        })
        .await?
    }

    /// Reads the next packet and requires it to be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Result<Publish> {
        self.recv().await?.publish()
    }

    /// Subscribes and returns the SUBACK return codes.
    pub async fn subscribe(&mut self, id: u16, filters: &[(&str, u8)]) -> Result<Vec<u8>> {
        self.send(&wire::subscribe(id, filters)).await?;
        let (acked, codes) = self.recv().await.context("waiting for SUBACK")?.suback()?;
        ensure!(acked == id, "SUBACK for id {acked}, expected {id}");
        Ok(codes)
    }

    /// Sends PINGREQ and requires PINGRESP as the next packet.
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&wire::pingreq()).await?;
        self.recv().await?.expect_kind(kind::PINGRESP)?;
        Ok(())
    }

    /// Requires the server to end the connection within `limit`; returns
    /// the close code it sent, if any (packets before it are ignored).
    pub async fn expect_closed(&mut self, limit: Duration) -> Result<Option<CloseCode>> {
        let closed = tokio::time::timeout(limit, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return None,
                }
            }
        })
        .await;
        closed.map_err(|_| anyhow!("the server did not close the WebSocket within {limit:?}"))
    }
}

/// A TLS connection to `localhost` over `tcp`, trusting the CA in `ca_pem`.
async fn tls_connect(
    tcp: TcpStream,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost")?;
    Ok(within("TLS handshake", connector.connect(name, tcp)).await??)
}
