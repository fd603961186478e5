//! One MQTT client connection: a TCP stream with a read and a write buffer,
//! the protocol version it speaks, and the CONNECT/SUBSCRIBE handshakes.
//! Publishers and subscribers own one each and drive it from a single task
//! (no split halves, no channels), so the bench spends its CPU on the
//! broker's traffic and little else.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::mqtt::{self, Incoming, Protocol};

/// Largest packet the bench accepts from a broker.
pub const MAX_PACKET: usize = 1 << 20;

/// How long a handshake step (connect, CONNACK, SUBACK) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Initial capacity of each read buffer; it grows for larger payloads.
const READ_CHUNK: usize = 16 * 1024;

pub struct Connection {
    pub stream: TcpStream,
    /// Bytes read but not yet parsed (possibly a partial packet).
    pub rbuf: BytesMut,
    /// Packets encoded but not yet written; flushed by [`Connection::flush`].
    pub wbuf: BytesMut,
    /// The version sent in CONNECT; every packet is encoded and parsed in it.
    pub protocol: Protocol,
    /// QoS 1/2 publishes the broker takes in flight from this client: its
    /// 5.0 Receive Maximum, or 65,535 (3.1.1 has no such limit).
    pub receive_maximum: u16,
    /// Highest QoS the broker accepts (5.0 Maximum QoS; 2 in 3.1.1).
    pub maximum_qos: u8,
    /// Keep-alive in force: the client's, or the 5.0 Server Keep Alive.
    pub keep_alive: u16,
}

impl Connection {
    /// Opens a TCP connection (from `source` when given, to spread source
    /// addresses over 127.0.0.0/8), sends CONNECT and waits for CONNACK.
    pub async fn open(
        addr: SocketAddr,
        source: Option<IpAddr>,
        protocol: Protocol,
        client_id: &str,
        keep_alive: u16,
        clean_session: bool,
    ) -> Result<Connection> {
        ensure!(addr.ip().is_loopback(), "{addr} is not a loopback address");
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding to {ip}"))?;
        }
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            protocol,
            receive_maximum: u16::MAX,
            maximum_qos: 2,
            keep_alive,
        };
        mqtt::encode_connect(
            &mut conn.wbuf,
            protocol,
            client_id,
            keep_alive,
            clean_session,
        );
        conn.flush().await?;
        let (code, limits) = conn
            .expect(|p| match p {
                Incoming::ConnAck {
                    return_code,
                    limits,
                } => Some((return_code, limits)),
                _ => None,
            })
            .await
            .context("waiting for CONNACK")?;
        // 0x01 is no 5.0 reason code: it is 3.1.1's "unacceptable protocol
        // version". scripts/bench looks for this wording.
        ensure!(
            !(protocol == Protocol::V5 && code == 0x01),
            "the broker does not serve MQTT 5.0 (CONNACK 0x01, unacceptable protocol version)"
        );
        ensure!(
            code == 0,
            "CONNACK refused the connection with {} code 0x{code:02X}",
            match protocol {
                Protocol::V311 => "return",
                Protocol::V5 => "reason",
            }
        );
        conn.receive_maximum = limits.receive_maximum.unwrap_or(u16::MAX);
        conn.maximum_qos = limits.maximum_qos.unwrap_or(2);
        conn.keep_alive = limits.server_keep_alive.unwrap_or(keep_alive);
        Ok(conn)
    }

    /// Subscribes to `filters` at `qos` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filters: &[String], qos: u8) -> Result<()> {
        mqtt::encode_subscribe(&mut self.wbuf, self.protocol, 1, filters, qos);
        self.flush().await?;
        let codes = self
            .expect(|p| match p {
                Incoming::SubAck { return_codes } => Some(return_codes.to_vec()),
                _ => None,
            })
            .await
            .context("waiting for SUBACK")?;
        // Granted QoS 0..=2; 0x80 and up is a refusal (5.0 has several).
        ensure!(
            codes.len() == filters.len() && codes.iter().all(|&c| c < 0x80),
            "SUBACK refused a filter: {codes:02X?}"
        );
        Ok(())
    }

    /// Writes out the whole write buffer.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream
                .write_all(&self.wbuf)
                .await
                .context("writing to the broker")?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more bytes into the read buffer; an error when the broker closed.
    pub async fn fill(&mut self) -> Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .context("reading from the broker")?;
        if n == 0 {
            bail!("the broker closed the connection");
        }
        Ok(n)
    }

    /// Reads packets until `pick` returns a value, within the handshake timeout.
    /// Packets before it (none are expected during a handshake) are skipped;
    /// bytes after it stay buffered.
    async fn expect<T>(&mut self, mut pick: impl FnMut(Incoming<'_>) -> Option<T>) -> Result<T> {
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            while let Some((packet, len)) = mqtt::parse(&self.rbuf, MAX_PACKET, self.protocol)? {
                let picked = pick(packet);
                self.rbuf.advance(len);
                if let Some(value) = picked {
                    return Ok(value);
                }
            }
            tokio::time::timeout_at(deadline, self.fill())
                .await
                .context("timed out")??;
        }
    }
}
