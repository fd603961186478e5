//! Membership changes as AstraMQ sees them, and the log line each one gets.

use serf::event::MemberEventType;

use super::MemberInfo;

/// A change in cluster membership, delivered to every
/// [`subscribe`](super::Membership::subscribe)r in the order serf reported it.
/// The [`MemberInfo`] is the member as it was at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member became alive: first contact, a restart with the same id, or
    /// this process itself at start.
    Joined(MemberInfo),
    /// A member announced a graceful leave (it will not come back as this
    /// incarnation). Seen by peers within tens of milliseconds of its leave.
    Left(MemberInfo),
    /// A member stopped answering probes and was declared dead (crash,
    /// `kill -9`, hang, partition). About 1 s after the fault on a LAN.
    Failed(MemberInfo),
    /// A live member changed its tags (for example its MQTT address).
    Updated(MemberInfo),
    /// A failed or left member was forgotten after the reconnect/tombstone
    /// timeout; it no longer appears anywhere.
    Reaped(MemberInfo),
}

impl MemberEvent {
    /// Builds our event from serf's event kind and one member of it.
    pub(crate) fn from_serf(kind: MemberEventType, member: MemberInfo) -> Self {
        match kind {
            MemberEventType::Join => MemberEvent::Joined(member),
            MemberEventType::Leave => MemberEvent::Left(member),
            MemberEventType::Failed => MemberEvent::Failed(member),
            MemberEventType::Update => MemberEvent::Updated(member),
            MemberEventType::Reap => MemberEvent::Reaped(member),
        }
    }

    /// The member the event is about.
    pub fn member(&self) -> &MemberInfo {
        match self {
            MemberEvent::Joined(m)
            | MemberEvent::Left(m)
            | MemberEvent::Failed(m)
            | MemberEvent::Updated(m)
            | MemberEvent::Reaped(m) => m,
        }
    }

    /// The `kind=` word of the log line: `joined`, `left`, `failed`,
    /// `updated` or `reaped`. Stable: tests and operators grep for it.
    pub fn kind(&self) -> &'static str {
        match self {
            MemberEvent::Joined(_) => "joined",
            MemberEvent::Left(_) => "left",
            MemberEvent::Failed(_) => "failed",
            MemberEvent::Updated(_) => "updated",
            MemberEvent::Reaped(_) => "reaped",
        }
    }

    /// Logs the event at info level. The message text itself carries
    /// `membership event kind=<kind> member=<node_id> role=<role>` (not only
    /// structured fields) so the line stays the same whatever the subscriber's
    /// formatting or colouring; details follow as fields.
    pub(crate) fn log(&self) {
        let m = self.member();
        tracing::info!(
            gossip_addr = %m.gossip_addr,
            mqtt_addr = m.mqtt_addr.map(tracing::field::display),
            version = %m.version,
            "membership event kind={} member={} role={}",
            self.kind(),
            m.node_id,
            m.role,
        );
    }
}
