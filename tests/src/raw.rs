//! [`RawClient`]: a byte-level MQTT client over a plain `TcpStream`.
//!
//! A client library refuses to send malformed packets, always acks, and
//! hides duplicates; the tests that need to do exactly those things use this
//! instead. Every read is bounded by a timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::wire::{self, kind, ConnAck, Connect, Publish, RawPacket};
use crate::{within, within_for, TIMEOUT};

/// A TCP connection to the node plus the bytes read but not yet parsed.
pub struct RawClient {
    /// The connection.
    stream: TcpStream,
    /// Bytes received that do not yet form a complete packet.
    buffer: Vec<u8>,
}

/// What a bounded read saw.
enum ReadOutcome {
    /// A complete packet.
    Packet(RawPacket),
    /// The node closed the connection (EOF or reset).
    Closed,
}

impl RawClient {
    /// Opens a TCP connection without sending anything.
    pub async fn connect_tcp(addr: SocketAddr) -> Result<Self> {
        let stream = within("TCP connect", TcpStream::connect(addr)).await??;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Opens a TCP connection from the loopback address `source` (any of
    /// 127.0.0.0/8 works on Linux), so a test can be several clients by
    /// address; sends nothing.
    pub async fn connect_tcp_from(addr: SocketAddr, source: IpAddr) -> Result<Self> {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = within("TCP connect", socket.connect(addr)).await??;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Connects, sends `connect`, and returns the CONNACK, whatever its code.
    pub async fn handshake(addr: SocketAddr, connect: &Connect) -> Result<(Self, ConnAck)> {
        let mut client = Self::connect_tcp(addr).await?;
        client.send(&connect.encode()).await?;
        let connack = client
            .recv()
            .await
            .context("waiting for CONNACK")?
            .connack()?;
        Ok((client, connack))
    }

    /// Connects and requires the node to accept; returns session-present.
    pub async fn connected(addr: SocketAddr, connect: &Connect) -> Result<(Self, bool)> {
        let (client, connack) = Self::handshake(addr, connect).await?;
        ensure!(
            connack.code == 0,
            "CONNACK refused with code {}",
            connack.code
        );
        Ok((client, connack.session_present))
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        within("socket write", self.stream.write_all(bytes)).await??;
        Ok(())
    }

    /// Closes our sending side (TCP FIN) while still reading what the node sends.
    ///
    /// This is how a well-behaved client ends after DISCONNECT; the node
    /// then sees end-of-stream right after the DISCONNECT.
    pub async fn shutdown_write(&mut self) -> Result<()> {
        within("socket shutdown", self.stream.shutdown()).await??;
        Ok(())
    }

    /// Reads the next packet; an error if none arrives within [`TIMEOUT`] or
    /// the connection closes.
    pub async fn recv(&mut self) -> Result<RawPacket> {
        match self.recv_for(TIMEOUT).await? {
            Some(packet) => Ok(packet),
            None => Err(anyhow!("no packet from the node within {TIMEOUT:?}")),
        }
    }

    /// Reads the next packet, or `None` if nothing arrives within `limit`.
    pub async fn recv_for(&mut self, limit: Duration) -> Result<Option<RawPacket>> {
        match tokio::time::timeout(limit, self.read_packet()).await {
            Err(_) => Ok(None),
            Ok(Ok(ReadOutcome::Packet(packet))) => Ok(Some(packet)),
            Ok(Ok(ReadOutcome::Closed)) => Err(anyhow!("the node closed the connection")),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Reads the next packet and requires it to be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Result<Publish> {
        self.recv().await?.publish()
    }

    /// Reads one packet or notices the close, with no time bound of its own.
    async fn read_packet(&mut self) -> Result<ReadOutcome> {
        loop {
            if let Some((packet, used)) = RawPacket::parse(&self.buffer)? {
                self.buffer.drain(..used);
                return Ok(ReadOutcome::Packet(packet));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ok(ReadOutcome::Closed),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Requires the node to close the connection within `limit`.
    ///
    /// Packets that arrive first are ignored: the point is that the node
    /// drops the connection, and some closes follow a final packet (e.g. a
    /// refusing CONNACK). Returns how long the close took.
    pub async fn expect_closed(&mut self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        within_for(limit, "the node to close the connection", async {
            loop {
                if let ReadOutcome::Closed = self.read_packet().await? {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        })
        .await??;
        Ok(start.elapsed())
    }

    /// Requires that no packet arrives for `period` (and the connection stays open).
    pub async fn expect_quiet(&mut self, period: Duration) -> Result<()> {
        match self.recv_for(period).await? {
            None => Ok(()),
            Some(packet) => Err(anyhow!("expected silence, got {packet:?}")),
        }
    }

    /// Sends PINGREQ and requires PINGRESP as the very next packet.
    pub async fn ping(&mut self) -> Result<()> {
        self.send(&wire::pingreq()).await?;
        self.recv()
            .await
            .context("waiting for PINGRESP")?
            .expect_kind(kind::PINGRESP)?;
        Ok(())
    }

    /// Subscribes and returns the SUBACK return codes.
    pub async fn subscribe(&mut self, id: u16, filters: &[(&str, u8)]) -> Result<Vec<u8>> {
        self.send(&wire::subscribe(id, filters)).await?;
        let (acked, codes) = self.recv().await.context("waiting for SUBACK")?.suback()?;
        ensure!(acked == id, "SUBACK for id {acked}, expected {id}");
        Ok(codes)
    }
}
