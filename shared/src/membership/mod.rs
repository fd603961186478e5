//! Gossip membership: which brokers and proxies are alive, for every process
//! in the cluster, without a central registry.
//!
//! # How it works
//!
//! Each process runs a [serf](https://docs.rs/serf) agent (a Rust port of
//! HashiCorp Serf, on the `memberlist` crate). Memberlist implements **SWIM**:
//! every `probe_interval` a member pings one random peer over UDP; if no ack
//! arrives within `probe_timeout` it asks a few other members to ping it
//! indirectly (and tries a TCP ping). A peer nobody can reach becomes
//! *suspect*; the suspicion is gossiped, and if the peer does not refute it
//! within the suspicion timeout it is declared *dead*. Membership changes
//! piggyback on gossip sent every `gossip_interval`, so they reach all
//! members in a few rounds, and periodic TCP push/pull syncs full state.
//!
//! **Lifeguard** (HashiCorp's extensions, also in memberlist) cuts false
//! positives: a member that notices it is slow (missed acks) probes less
//! aggressively, suspicion timeouts start long and shrink as independent
//! members confirm the suspicion, and a suspected member that is alive
//! refutes quickly.
//!
//! Serf adds, on top, the member's **tags** (our identity: role, MQTT and
//! metrics addresses, version — see [`MemberInfo`]), graceful **leave**
//! intents (a leaving member is reported `left`, not `failed`), and
//! **reaping**: failed and left members are remembered for a while (to
//! reconnect, and so a stale rumour cannot resurrect them) and then forgotten.
//!
//! # What is guaranteed, and what is not
//!
//! - Eventually consistent: every live member converges on the same view,
//!   typically within 100 ms of a change on a LAN. Two processes may briefly
//!   disagree; nothing here is a consensus or a lock. Use it for routing and
//!   for *noticing* failures; decisions that need exactly one owner (session
//!   takeover) must be fenced elsewhere (Redis).
//! - Failure detection is probabilistic and timing-based: on loopback a
//!   `kill -9` is reported `failed` by every survivor in about 1 s (measured
//!   0.9–1.1 s), a hung process in about 1.2 s. With only one or two
//!   survivors Lifeguard gets fewer confirmations and it takes 4–8 s.
//!   A member that is merely slow can be declared failed; it then refutes
//!   and is reported `joined` again.
//! - A graceful [`Membership::leave`] is reported `left` by peers within
//!   tens of milliseconds. A process that exits without leaving is `failed`.
//! - A restarted process with the same node id rejoins as that member
//!   (`joined`), within ~100 ms of starting. Two *live* processes with one
//!   id: serf shuts one down (~3 s later); this module then logs an error and
//!   closes every [`Membership::subscribe`] stream.
//! - Failed and left members are reaped ~6–8 s later (`reaped`). A partition
//!   longer than that splits the cluster until a member finds itself alone
//!   and re-joins its seeds (`seeds.rs`).
//! - Gossip is plaintext unless a shared key is configured
//!   ([`MembershipConfig::encryption_key`]): then AES-GCM, and members
//!   without the key are refused in both directions. It authenticates the
//!   cluster, not individual members.
//!
//! # The knobs
//!
//! All timers are in [`tuning`], with a table of values, serf defaults and
//! reasons: memberlist `lan()` plus probe interval 200 ms, probe timeout
//! 100 ms, TCP timeout 300 ms, suspicion multiplier 3, gossip interval 50 ms;
//! reap every 2 s, reconnect/tombstone timeouts 6 s.
//!
//! # Layout
//!
//! - `config` — [`Role`], [`MembershipConfig`].
//! - `member` — [`MemberInfo`], [`MemberState`], the tag encoding.
//! - `event` — [`MemberEvent`] and its log line.
//! - `key` — reading the gossip key (base64 or hex).
//! - [`tuning`] — serf/memberlist options.
//! - `handle` — [`Membership`]: start, snapshot, subscribe, leave.
//! - `watcher` — the task turning serf events into ours.
//! - `seeds` — joining seeds, retrying, re-joining when alone.
//! - `startup_race` — workaround for peers serf 0.5.2 misses while starting.
//!
//! # Logs
//!
//! Every event is logged at info level as
//! `membership event kind=<joined|left|failed|updated|reaped> member=<node_id> role=<broker|proxy>`
//! (in the message text, so the format is stable); tests parse these lines.

mod config;
mod error;
mod event;
mod handle;
mod key;
mod member;
mod seeds;
mod startup_race;
#[cfg(test)]
mod tests;
pub mod tuning;
mod watcher;

pub use config::{MembershipConfig, Role, UnknownRole};
pub use error::MembershipError;
pub use event::MemberEvent;
pub use handle::Membership;
pub use member::{MemberInfo, MemberState};
