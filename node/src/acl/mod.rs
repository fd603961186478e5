//! Authorization: which topics a client may publish to and subscribe to.
//!
//! The rules come from `--acl-file` (TOML, [`rules`]): an ordered list of
//! `[[rule]]` tables, each with an `action` (`publish`, `subscribe`,
//! `all`), a `topic` filter in which `%u` and `%c` stand for the user name
//! and client id ([`pattern`]), an optional exact `user` and `client`, and
//! a `permission` (`allow`, `deny`). The first rule that matches decides;
//! when none does, the top-level `default` decides, and a file without
//! `default` denies. Without `--acl-file` nothing is checked and everything
//! is allowed (the node holds no [`AccessControl`] at all).
//!
//! What is checked, and where:
//! - PUBLISH (session, before routing): a denied publish is acknowledged
//!   as usual (PUBACK/PUBREC; 3.1.1 has no way to refuse one) but neither
//!   delivered nor retained — a denied retained publish neither sets nor
//!   clears the retained message.
//! - SUBSCRIBE: a denied filter gets 0x80 in its SUBACK slot; the others
//!   of the same packet are judged on their own. An allow rule grants a
//!   filter only when its own filter covers every topic of the requested
//!   one (`a/b` does not grant `a/#`); a deny rule refuses a filter when it
//!   shares any topic with it (a deny of `a/secret` refuses `a/#`). Retained
//!   messages are sent only for granted filters. A resumed persistent
//!   session's subscriptions are judged again against the rules in force.
//! - Wills, at CONNECT: a will whose topic the client may not publish to
//!   is dropped then (the connection is accepted), so no node ever fires it.
//!
//! Each denial is counted in `astramq_acl_denials_total{action}`. The file
//! is re-read on SIGHUP ([`AccessControl::reload`]); a file that cannot be
//! read or parsed keeps the old rules. A reload applies to later
//! requests: subscriptions already held stay until the client
//! unsubscribes or its session resumes. In a cluster every node reads its
//! own file: give every node the same one.

pub mod pattern;
pub mod rules;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

pub use pattern::Identity;
pub use rules::{AclFileError, Action, Rules};

/// The ACL in force on this node; present only with `--acl-file`.
pub struct AccessControl {
    /// The file, re-read by [`AccessControl::reload`].
    path: PathBuf,
    /// Its rules; replaced whole, so a decision sees one version.
    rules: RwLock<Arc<Rules>>,
}

impl AccessControl {
    /// The ACL read from `path` at start-up as `rules`.
    pub fn new(path: PathBuf, rules: Rules) -> AccessControl {
        AccessControl {
            path,
            rules: RwLock::new(Arc::new(rules)),
        }
    }

    fn current(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// May `who` publish to `topic`?
    pub fn may_publish(&self, who: Identity<'_>, topic: &str) -> bool {
        self.current().may_publish(who, topic)
    }

    /// May `who` subscribe to `filter`?
    pub fn may_subscribe(&self, who: Identity<'_>, filter: &str) -> bool {
        self.current().may_subscribe(who, filter)
    }

    /// Re-reads the file (on SIGHUP); a file that cannot be used changes
    /// nothing.
    pub fn reload(&self) {
        match Rules::load(&self.path) {
            Ok(rules) => {
                tracing::info!(path = %self.path.display(), rules = rules.len(), "ACL file reloaded");
                *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
            }
            Err(error) => {
                tracing::warn!(%error, "ACL file not reloaded; keeping the previous rules");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_replaces_the_rules_and_a_bad_file_keeps_them() {
        let path = std::env::temp_dir().join(format!("astramq-acl-{}", std::process::id()));
        let deny = "[[rule]]\naction = \"all\"\ntopic = \"a\"\npermission = \"deny\"\n";
        let who = Identity {
            user: None,
            client: "c",
        };
        std::fs::write(&path, format!("default = \"allow\"\n{deny}")).unwrap();
        let acl = AccessControl::new(path.clone(), Rules::load(&path).unwrap());
        assert!(!acl.may_publish(who, "a"));
        std::fs::write(&path, "default = \"allow\"\n").unwrap();
        acl.reload();
        assert!(acl.may_publish(who, "a"));
        std::fs::write(&path, "default = ").unwrap();
        acl.reload();
        assert!(acl.may_publish(who, "a"));
        std::fs::remove_file(&path).unwrap();
        acl.reload();
        assert!(acl.may_subscribe(who, "a"));
    }
}
