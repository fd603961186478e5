//! The Prometheus pieces every AstraMQ binary uses the same way:
//! registering a metric, rendering a registry for `/metrics`,
//! `astramq_build_info`, and `astramq_membership_members`.
//!
//! A metric name means one thing in every binary, so the two that both the
//! node and the proxy export are defined here once:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `astramq_build_info` | gauge, always 1 | `version`, `component` (`node`, `proxy`) |
//! | `astramq_membership_members` | gauge: gossip members as this process sees them | `role` (`broker`, `proxy`), `state` (`alive`, `leaving`, `left`, `failed`) |

use std::collections::HashMap;

use prometheus::core::Collector;
use prometheus::{IntGaugeVec, Opts, Registry};

use crate::membership::{MemberEvent, MemberState, Membership, Role};

/// Registers `metric` (as built by its constructor) in `registry` and hands
/// it back. Metric definitions are constants of the program, so a bad name
/// or a second registration is a bug and panics at start-up.
pub fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

/// Everything in `registry`, in the Prometheus text exposition format.
pub fn render(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|error| format!("# metrics encoding failed: {error}\n"))
}

/// Registers `astramq_build_info{version, component} 1`: which binary
/// (`component`) of which version serves this endpoint; the dashboards
/// find their Prometheus jobs through it.
pub fn register_build_info(registry: &Registry, component: &str, version: &str) {
    let build = register(
        registry,
        IntGaugeVec::new(
            Opts::new(
                "astramq_build_info",
                "Build information; the value is always 1.",
            ),
            &["version", "component"],
        ),
    );
    build.with_label_values(&[version, component]).set(1);
}

/// The states `astramq_membership_members` reports, each series present
/// (at 0) from the start.
const STATES: [(MemberState, &str); 4] = [
    (MemberState::Alive, "alive"),
    (MemberState::Leaving, "leaving"),
    (MemberState::Left, "left"),
    (MemberState::Failed, "failed"),
];

/// The roles `astramq_membership_members` reports.
const ROLES: [Role; 2] = [Role::Broker, Role::Proxy];

/// `astramq_membership_members{role, state}`: the gossip members this
/// process knows of, by role and last known state, itself included.
///
/// Counted from membership events: seeded with this process and the live
/// brokers, every other member is counted from its first event on, and a
/// reaped member is forgotten.
pub struct MemberCount {
    /// The gauge, one series per role and state.
    gauge: IntGaugeVec,
    /// The last known role and state of each member, by node id.
    members: HashMap<String, (Role, MemberState)>,
}

impl MemberCount {
    /// Registers the gauge in `registry`, every series at 0.
    pub fn register(registry: &Registry) -> MemberCount {
        let gauge = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "astramq_membership_members",
                    "Gossip members this process knows of (itself included), by role and state.",
                ),
                &["role", "state"],
            ),
        );
        for role in ROLES {
            for (_, state) in STATES {
                gauge.with_label_values(&[role.as_str(), state]);
            }
        }
        MemberCount {
            gauge,
            members: HashMap::new(),
        }
    }

    /// Counts this process (`node_id`, `role`) and the live brokers of
    /// `membership` as alive, and exports.
    pub fn seed(&mut self, node_id: &str, role: Role, membership: &Membership) {
        self.members
            .insert(node_id.to_owned(), (role, MemberState::Alive));
        for broker in membership.live_brokers().iter() {
            self.members
                .insert(broker.node_id.clone(), (broker.role, MemberState::Alive));
        }
        self.export();
    }

    /// Applies one membership event and exports.
    pub fn apply(&mut self, event: &MemberEvent) {
        let member = event.member();
        let state = match event {
            MemberEvent::Joined(_) | MemberEvent::Updated(_) => MemberState::Alive,
            MemberEvent::Left(_) => MemberState::Left,
            MemberEvent::Failed(_) => MemberState::Failed,
            MemberEvent::Reaped(_) => {
                self.members.remove(&member.node_id);
                self.export();
                return;
            }
        };
        self.members
            .insert(member.node_id.clone(), (member.role, state));
        self.export();
    }

    /// Sets every series to 0 (membership stopped: this process knows of
    /// no member any more).
    pub fn clear(&mut self) {
        self.members.clear();
        self.export();
    }

    /// How many members of `role` are in `state`.
    pub fn count(&self, role: Role, state: MemberState) -> i64 {
        let n = self
            .members
            .values()
            .filter(|(r, s)| *r == role && *s == state)
            .count();
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    fn export(&self) {
        for role in ROLES {
            for (state, label) in STATES {
                self.gauge
                    .with_label_values(&[role.as_str(), label])
                    .set(self.count(role, state));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::membership::MemberInfo;

    use super::*;

    fn member(id: &str, role: Role) -> MemberInfo {
        MemberInfo {
            node_id: id.to_owned(),
            role,
            mqtt_addr: None,
            metrics_addr: None,
            version: "0".to_owned(),
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            state: MemberState::Alive,
        }
    }

    #[test]
    fn members_are_counted_by_role_and_state_until_reaped() {
        let registry = Registry::new();
        let mut count = MemberCount::register(&registry);
        count.apply(&MemberEvent::Joined(member("a", Role::Broker)));
        count.apply(&MemberEvent::Joined(member("b", Role::Broker)));
        count.apply(&MemberEvent::Joined(member("p", Role::Proxy)));
        count.apply(&MemberEvent::Failed(member("b", Role::Broker)));
        assert_eq!(count.count(Role::Broker, MemberState::Alive), 1);
        assert_eq!(count.count(Role::Broker, MemberState::Failed), 1);
        assert_eq!(count.count(Role::Proxy, MemberState::Alive), 1);
        let text = render(&registry);
        assert!(text.contains(r#"astramq_membership_members{role="broker",state="failed"} 1"#));
        assert!(text.contains(r#"astramq_membership_members{role="proxy",state="alive"} 1"#));
        count.apply(&MemberEvent::Reaped(member("b", Role::Broker)));
        assert_eq!(count.count(Role::Broker, MemberState::Failed), 0);
        count.clear();
        assert_eq!(count.count(Role::Broker, MemberState::Alive), 0);
    }

    #[test]
    fn build_info_names_component_and_version() {
        let registry = Registry::new();
        register_build_info(&registry, "node", "1.2.3");
        let text = render(&registry);
        assert!(text.contains(r#"astramq_build_info{component="node",version="1.2.3"} 1"#));
    }
}
