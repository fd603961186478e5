//! One MQTT client connection: a TCP stream with a read and a write buffer,
//! and the CONNECT/SUBSCRIBE handshakes. Publishers and subscribers own one
//! each and drive it from a single task (no split halves, no channels), so
//! the bench spends its CPU on the broker's traffic and little else.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::mqtt::{self, Incoming};

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
}

impl Connection {
    /// Opens a TCP connection (from `source` when given, to spread source
    /// addresses over 127.0.0.0/8), sends CONNECT and waits for CONNACK.
    pub async fn open(
        addr: SocketAddr,
        source: Option<IpAddr>,
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
        };
        mqtt::encode_connect(&mut conn.wbuf, client_id, keep_alive, clean_session);
        conn.flush().await?;
        let code = conn
            .expect(|p| match p {
                Incoming::ConnAck { return_code } => Some(return_code),
                _ => None,
            })
            .await
            .context("waiting for CONNACK")?;
        ensure!(
            code == 0,
            "CONNACK refused the connection with return code {code}"
        );
        Ok(conn)
    }

    /// Subscribes to `filters` at `qos` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filters: &[String], qos: u8) -> Result<()> {
        mqtt::encode_subscribe(&mut self.wbuf, 1, filters, qos);
        self.flush().await?;
        let codes = self
            .expect(|p| match p {
                Incoming::SubAck { return_codes } => Some(return_codes.to_vec()),
                _ => None,
            })
            .await
            .context("waiting for SUBACK")?;
        ensure!(
            codes.len() == filters.len() && codes.iter().all(|&c| c != 0x80),
            "SUBACK refused a filter: {codes:?}"
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
            while let Some((packet, len)) = mqtt::parse(&self.rbuf, MAX_PACKET)? {
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
