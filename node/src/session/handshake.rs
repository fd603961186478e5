//! The start of a connection: CONNECT in, CONNACK out, session claimed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use astramq_shared::log_text::untrusted;
use tokio::sync::{mpsc, watch, Notify};
use tracing::Instrument;

use super::active::{ActiveSession, SessionSetup, SetupV5};
use super::v5::ClientLimits;
use super::will::Will;
use super::ShutdownSignal;
use crate::acl::Identity;
use crate::auth::Verdict;
use crate::broker::Broker;
use crate::connection::{Connection, ConnectionError};
use crate::limits::sessions::SessionSlot;
use crate::message::ClientId;
use crate::protocol::codec::{encode_connack_refusal, ConnackRefusal, ConnectPacket, Version};
use crate::protocol::ProtocolError;
use crate::registry::mailbox::Mailbox;
use crate::registry::SessionHandle;
use crate::router::topic::is_valid_topic_name;
use crate::stats::{AclDenial, LimitReason, Refusal};
use crate::store::ClaimRequest;
use crate::transport::Transport;

/// How long a new connection waits for an older one with its client id to
/// hand its session over.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted connection (TLS: after its handshake) until it
/// ends. `_done` is dropped when the connection ends, which is how
/// shutdown knows every session is gone.
pub async fn serve(
    broker: Arc<Broker>,
    stream: Transport,
    peer: SocketAddr,
    shutdown: ShutdownSignal,
    _done: mpsc::Sender<()>,
) {
    // Boxed and finished before the session runs: its state is not kept in
    // the task of a connected (mostly idle) session.
    let Some((connection, setup, client_addr)) = Box::pin(handshake(&broker, stream, peer)).await
    else {
        return;
    };
    let span =
        tracing::debug_span!("session", client_id = %untrusted(&setup.client_id), %client_addr);
    ActiveSession::start(broker, connection, setup, shutdown)
        .instrument(span)
        .await;
}

/// CONNECT in, checks, takeover and claim; on refusal answers and closes.
async fn handshake(
    broker: &Arc<Broker>,
    stream: Transport,
    peer: SocketAddr,
) -> Option<(Connection, SessionSetup, SocketAddr)> {
    let mut connection = Connection::new(stream, broker.limits().max_packet_size);
    let client_addr = client_address(broker, &mut connection, peer).await?;
    let Some(mut connect) = read_connect(broker, &mut connection).await else {
        connection.close(broker.limits().write_timeout).await;
        return None;
    };
    let client_id = match admit(broker, &connect) {
        Ok(id) => id,
        Err(answer) => {
            tracing::debug!(client_id = %untrusted(&connect.client_id), ?answer, "connection refused");
            broker.stats().refused(match answer {
                Some(ConnackRefusal::IdentifierRejected) => Refusal::IdentifierRejected,
                _ => Refusal::BadConnect,
            });
            if let Some(code) = answer {
                encode_connack_refusal(connection.output(), connect.version, code);
            }
            connection.close(broker.limits().write_timeout).await;
            return None;
        }
    };
    if let Some(code) = authenticate(broker, &connection, &mut connect, client_addr).await {
        encode_connack_refusal(connection.output(), connect.version, code);
        connection.close(broker.limits().write_timeout).await;
        return None;
    }
    if !broker.accepts_clients() {
        tracing::debug!(client_id = %untrusted(&client_id), "connection refused: rejoining the cluster");
        broker.stats().refused(Refusal::ServerUnavailable);
        let answer = ConnackRefusal::ServerUnavailable;
        encode_connack_refusal(connection.output(), connect.version, answer);
        connection.close(broker.limits().write_timeout).await;
        return None;
    }
    let Some(slot) = broker.reserve_session(&client_id) else {
        tracing::debug!(client_id = %untrusted(&client_id), "connection refused: max-sessions reached");
        broker.stats().limit_refused(LimitReason::Sessions);
        broker.stats().refused(Refusal::ServerUnavailable);
        let answer = ConnackRefusal::QuotaExceeded;
        encode_connack_refusal(connection.output(), connect.version, answer);
        connection.close(broker.limits().write_timeout).await;
        return None;
    };
    let (connection, setup) = establish(broker, connection, connect, client_id, slot).await?;
    Some((connection, setup, client_addr))
}

/// The client's address: the peer's, or, behind a trusted load balancer,
/// the one in its PROXY protocol header (within the connect timeout). Only
/// plain TCP carries one: on TLS and WebSocket the header would have to
/// come before the handshake, and load balancers in front of those ports
/// terminate them.
async fn client_address(
    broker: &Broker,
    connection: &mut Connection,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    if !connection.transport().is_plain_tcp()
        || !broker.limits().trusted_proxies.contains(&peer.ip())
    {
        return Some(peer);
    }
    let header = tokio::time::timeout(
        broker.limits().connect_timeout,
        connection.read_proxy_header(),
    )
    .await;
    match header {
        Ok(Ok(source)) => Some(source.unwrap_or(peer)),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "trusted proxy sent no valid PROXY header");
            broker.stats().refused(Refusal::BadConnect);
            None
        }
        Err(_) => {
            broker.stats().refused(Refusal::BadConnect);
            None
        }
    }
}

/// Reads the first packet; answers and returns `None` unless it is a
/// well-formed CONNECT.
async fn read_connect(broker: &Broker, connection: &mut Connection) -> Option<ConnectPacket> {
    let connect =
        tokio::time::timeout(broker.limits().connect_timeout, connection.read_connect()).await;
    let error = match connect {
        Ok(Ok(Some(connect))) => return Some(*connect),
        Ok(Err(ConnectionError::Protocol(error))) => error,
        Err(_) => {
            tracing::debug!("no CONNECT within the connect timeout");
            broker.stats().refused(Refusal::BadConnect);
            return None;
        }
        Ok(Ok(None)) | Ok(Err(_)) => {
            broker.stats().refused(Refusal::BadConnect);
            return None;
        }
    };
    // The refusals of the rule set shared with the proxy
    // (astramq_shared::mqtt_connect): the proxy answers these the same way.
    if let ProtocolError::IdentifierRejected(reason) = &error {
        tracing::debug!(reason, "client identifier rejected");
        broker.stats().refused(Refusal::IdentifierRejected);
        let answer = ConnackRefusal::IdentifierRejected;
        encode_connack_refusal(connection.output(), Version::Mqtt311, answer);
        return None;
    }
    broker.stats().protocol_errors.inc();
    if let ProtocolError::UnsupportedProtocol { name, level } = &error {
        tracing::debug!(name = %untrusted(name), level, "unsupported protocol");
        broker.stats().refused(Refusal::UnsupportedProtocol);
        let answer = ConnackRefusal::UnsupportedProtocol;
        encode_connack_refusal(connection.output(), Version::Mqtt311, answer);
    } else {
        tracing::debug!(%error, "refused first packet");
        broker.stats().refused(Refusal::BadConnect);
    }
    None
}

/// Checks the CONNECT's identity and will; returns the client id to use,
/// or the CONNACK code to refuse with (`None`: close without answering,
/// for a protocol violation).
fn admit(broker: &Broker, connect: &ConnectPacket) -> Result<ClientId, Option<ConnackRefusal>> {
    let limits = &broker.limits();
    if let Some(will) = &connect.will {
        if !is_valid_topic_name(&will.topic) {
            broker.stats().protocol_errors.inc();
            return Err(None);
        }
        if let Err(limit) = limits.topics.check(&will.topic) {
            broker.stats().limit_refused(limit.into());
            return Err(None);
        }
        if will.payload.len() > limits.max_will_payload {
            broker.stats().limit_refused(LimitReason::WillPayload);
            return Err(None);
        }
        let says_utf8 = will
            .v5
            .as_ref()
            .is_some_and(|v5| v5.properties.is_utf8_payload);
        if says_utf8 && std::str::from_utf8(&will.payload).is_err() {
            // 5.0 §3.1.3.2.3: a will marked UTF-8 must be (CONNACK 0x99).
            broker.stats().protocol_errors.inc();
            return Err(Some(ConnackRefusal::PayloadFormatInvalid));
        }
    }
    if connect.client_id.len() > limits.max_client_id_length {
        broker.stats().limit_refused(LimitReason::ClientIdLength);
        return Err(Some(ConnackRefusal::IdentifierRejected));
    }
    // The protocol's own client id rules (an empty id needs a clean
    // session; 3.1 ids are 1 to 23 bytes) were applied with the shared
    // CONNECT rules when it was decoded.
    if connect.client_id.is_empty() {
        return Ok(format!("astramq-{}-{}", broker.node_id(), broker.unique_id()).into());
    }
    Ok(connect.client_id.as_str().into())
}

/// Checks the CONNECT's credentials; `None` lets it in, else the CONNACK
/// code to refuse with (counted here).
///
/// A client certificate verified against `--tls-client-ca` that has a
/// subject CN authenticates the client by itself: the CN replaces the
/// CONNECT's user name (its password is dropped unchecked) and the client
/// is let in. A certificate without a CN leaves the CONNECT's own
/// credentials to be checked as on any connection.
async fn authenticate(
    broker: &Broker,
    connection: &Connection,
    connect: &mut ConnectPacket,
    client_addr: SocketAddr,
) -> Option<ConnackRefusal> {
    if let Some(method) = connect.v5.as_ref().and_then(|v5| v5.auth_method.as_ref()) {
        // 5.0 enhanced authentication: no method is supported (4.12).
        tracing::debug!(method = %untrusted(method), "connection refused: authentication method not supported");
        broker.stats().refused(Refusal::BadAuthenticationMethod);
        return Some(ConnackRefusal::BadAuthenticationMethod);
    }
    if let Some(Some(name)) = connection.transport().certificate_name() {
        tracing::debug!(user = %untrusted(&name), "authenticated by client certificate");
        connect.username = Some(name);
        connect.password = None;
        return None;
    }
    let verdict = broker
        .auth()
        .check(
            connect.username.as_deref(),
            connect.password.as_ref(),
            client_addr.ip(),
        )
        .await;
    let (refusal, code) = match verdict {
        Verdict::Accepted => return None,
        Verdict::BadCredentials => (
            Refusal::BadCredentials,
            ConnackRefusal::BadUserNameOrPassword,
        ),
        Verdict::NotAuthorized => (Refusal::NotAuthorized, ConnackRefusal::NotAuthorized),
        Verdict::Unavailable => (
            Refusal::ServerUnavailable,
            ConnackRefusal::ServerUnavailable,
        ),
    };
    tracing::debug!(
        client_id = %untrusted(&connect.client_id),
        user = %untrusted(connect.username.as_deref().unwrap_or("")),
        ?verdict,
        "connection refused"
    );
    broker.stats().refused(refusal);
    Some(code)
}

/// Registers the session (taking the id over from an older connection)
/// and claims it in the store. `slot` holds its room under `max-sessions`
/// until the registry counts it.
async fn establish(
    broker: &Broker,
    mut connection: Connection,
    connect: ConnectPacket,
    client_id: ClientId,
    slot: SessionSlot<'_>,
) -> Option<(Connection, SessionSetup)> {
    let version = connect.version;
    let terms = SessionTerms::of(&connect);
    let (finished_tx, finished_rx) = watch::channel(false);
    let handle = SessionHandle {
        connection_id: broker.unique_id(),
        mailbox: Arc::new(Mailbox::default()),
        kick: Arc::new(Notify::new()),
        kick_reason: Arc::default(),
        finished: finished_rx,
        persistent: terms.persistent,
    };
    if !take_over(broker, &client_id, &handle).await {
        drop(slot);
        broker.stats().refused(Refusal::ServerUnavailable);
        let answer = ConnackRefusal::ServerUnavailable;
        encode_connack_refusal(connection.output(), version, answer);
        connection.close(broker.limits().write_timeout).await;
        return None;
    }
    // Registered: the registry counts the session from here on.
    drop(slot);
    let will = connect
        .will
        .filter(|w| may_publish_will(broker, &connect.username, &client_id, &w.topic))
        .map(Will::from_packet);
    let request = ClaimRequest {
        client_id: client_id.clone(),
        clean_start: connect.clean_session,
        persistent: terms.persistent,
        expiry: terms.expiry,
        will: will.as_ref().map(|w| w.message.clone()),
    };
    let claim = match broker.store().claim_session(&request).await {
        Ok(claim) => claim,
        Err(error) => {
            tracing::warn!(%error, client_id = %untrusted(&client_id), "session not claimed: store unavailable");
            broker.registry().remove(&client_id, handle.connection_id);
            broker.stats().refused(Refusal::ServerUnavailable);
            let answer = ConnackRefusal::ServerUnavailable;
            encode_connack_refusal(connection.output(), version, answer);
            connection.close(broker.limits().write_timeout).await;
            return None;
        }
    };
    if !broker.accepts_clients() {
        // The node began rejoining while this claim was in flight (after
        // the rejoin dropped every client): keep the claimed session as an
        // offline one, so its messages are queued and its routes stay, and
        // send the client elsewhere.
        park_refused_claim(broker, &client_id, !terms.persistent, claim).await;
        broker.registry().remove(&client_id, handle.connection_id);
        broker.stats().refused(Refusal::ServerUnavailable);
        let answer = ConnackRefusal::ServerUnavailable;
        encode_connack_refusal(connection.output(), version, answer);
        connection.close(broker.limits().write_timeout).await;
        return None;
    }
    let keep_alive = broker.limits().keep_alive.apply(connect.keep_alive);
    if keep_alive.clamped {
        broker.stats().limit_refused(LimitReason::KeepAlive);
    }
    let v5 = connect.v5.as_ref().map(|v5| {
        let server_keep_alive = (keep_alive.secs != connect.keep_alive).then_some(keep_alive.secs);
        Box::new(SetupV5 {
            client: ClientLimits::from_connect(v5),
            session_expiry: v5.session_expiry_interval,
            assigned_client_id: connect.client_id.is_empty(),
            server_keep_alive,
        })
    });
    let setup = SessionSetup {
        client_id,
        clean_start: connect.clean_session,
        clean_session: !terms.persistent,
        keep_alive: keep_alive.timeout,
        will,
        user: connect.username,
        handle,
        finished: finished_tx,
        claim,
        v5,
    };
    Some((connection, setup))
}

/// How long a session lasts, from its CONNECT.
struct SessionTerms {
    /// Kept when the connection ends (3.1.1: clean session 0; 5.0: a
    /// session expiry interval above 0).
    persistent: bool,
    /// 5.0: seconds it is kept after its connection ends; `None`: until
    /// claimed (3.1.1, or 0xFFFFFFFF).
    expiry: Option<u32>,
}

impl SessionTerms {
    fn of(connect: &ConnectPacket) -> SessionTerms {
        match &connect.v5 {
            Some(v5) => SessionTerms {
                persistent: v5.session_expiry_interval > 0,
                expiry: Some(v5.session_expiry_interval).filter(|&secs| secs != u32::MAX),
            },
            None => SessionTerms {
                persistent: !connect.clean_session,
                expiry: None,
            },
        }
    }
}

/// Whether the ACL lets this client's will be published; a denied will is
/// dropped here, at CONNECT, so no node (this one or a survivor) fires it.
fn may_publish_will(
    broker: &Broker,
    user: &Option<String>,
    client_id: &ClientId,
    topic: &str,
) -> bool {
    let Some(acl) = broker.acl() else {
        return true;
    };
    let who = Identity {
        user: user.as_deref(),
        client: client_id,
    };
    if acl.may_publish(who, topic) {
        return true;
    }
    tracing::debug!(client_id = %untrusted(client_id), topic = %untrusted(topic), "will dropped: ACL denies its topic");
    broker.stats().acl_denied(AclDenial::Will);
    false
}

/// A persistent session claimed just as the node started rejoining: held
/// as an offline session here (its subscriptions in the tree, its routes
/// announced) until its client reconnects somewhere.
async fn park_refused_claim(
    broker: &Broker,
    client_id: &ClientId,
    clean_session: bool,
    claim: crate::store::SessionClaim,
) {
    if clean_session {
        return;
    }
    let subscriptions = claim
        .previous
        .map(|state| state.subscriptions.into_iter().collect())
        .unwrap_or_default();
    broker.adopt_offline_session(client_id, subscriptions).await;
}

/// Registers `handle` for `client_id`, first ending any session that holds
/// the id (MQTT-3.1.4-2). Returns false if the old session would not end.
async fn take_over(broker: &Broker, client_id: &ClientId, handle: &SessionHandle) -> bool {
    loop {
        let existing = match broker.registry().register(client_id, handle.clone()) {
            Ok(()) => return true,
            Err(existing) => existing,
        };
        tracing::debug!(client_id = %untrusted(client_id), "taking over a connected session");
        existing.kick.notify_one();
        let mut finished = existing.finished.clone();
        let ended = tokio::time::timeout(TAKEOVER_TIMEOUT, finished.wait_for(|done| *done)).await;
        if !matches!(ended, Ok(Ok(_))) {
            tracing::warn!(client_id = %untrusted(client_id), "old session did not end; refusing the new connection");
            return false;
        }
        // The old session removes itself before it reports finished; loop in
        // case yet another connection registered meanwhile.
        broker.registry().remove(client_id, existing.connection_id);
    }
}
