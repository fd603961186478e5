//! The ACL file and its decisions: an ordered list of `[[rule]]` tables,
//! the first that matches decides, else `default`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::pattern::{Identity, Pattern};

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic (a will counts as one).
    Publish,
    /// SUBSCRIBE to a filter.
    Subscribe,
}

/// Which actions a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Actions {
    Publish,
    Subscribe,
    All,
}

impl Actions {
    fn includes(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Actions::All, _)
                | (Actions::Publish, Action::Publish)
                | (Actions::Subscribe, Action::Subscribe)
        )
    }
}

/// A rule's (or the default's) answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Let it happen.
    Allow,
    /// Refuse it.
    Deny,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    /// When no rule matches; deny when absent.
    default: Option<Permission>,
    #[serde(default)]
    rule: Vec<RuleFile>,
}

/// A `[[rule]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    action: Actions,
    topic: String,
    user: Option<String>,
    client: Option<String>,
    permission: Permission,
}

/// One rule, its filter parsed.
#[derive(Debug, Clone)]
struct Rule {
    actions: Actions,
    topic: Pattern,
    user: Option<String>,
    client: Option<String>,
    permission: Permission,
}

impl Rule {
    /// Whether the rule is about `action` by `who` (topic aside).
    fn concerns(&self, action: Action, who: Identity<'_>) -> bool {
        self.actions.includes(action)
            && self.user.as_deref().is_none_or(|u| who.user == Some(u))
            && self.client.as_deref().is_none_or(|c| who.client == c)
    }
}

/// The rules in force.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Permission,
}

/// Why an ACL file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AclFileError {
    /// It could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It is not valid TOML of the expected shape.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place.
        message: String,
    },
}

impl Rules {
    /// Parses an ACL file's text; the error says what and where.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let rules = file
            .rule
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                let topic = Pattern::parse(&r.topic).ok_or_else(|| {
                    format!(
                        "rule {}: topic {:?} is not a valid topic filter",
                        index + 1,
                        r.topic
                    )
                })?;
                Ok(Rule {
                    actions: r.action,
                    topic,
                    user: r.user,
                    client: r.client,
                    permission: r.permission,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Rules {
            rules,
            default: file.default.unwrap_or(Permission::Deny),
        })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Rules, AclFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Rules::parse(&text).map_err(|message| AclFileError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none (everything gets the default).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// May `who` publish to topic name `topic`? The first rule about
    /// publishing by `who` whose filter matches the topic decides.
    pub fn may_publish(&self, who: Identity<'_>, topic: &str) -> bool {
        self.rules
            .iter()
            .find(|r| r.concerns(Action::Publish, who) && r.topic.matches_topic(who, topic))
            .map_or(self.default, |r| r.permission)
            == Permission::Allow
    }

    /// May `who` subscribe to `filter`? Rules are read in order; an allow
    /// rule decides when its filter covers the whole requested filter, a
    /// deny rule when its filter shares any topic with it. So a grant
    /// never includes a topic that an earlier deny rule names.
    pub fn may_subscribe(&self, who: Identity<'_>, filter: &str) -> bool {
        self.rules
            .iter()
            .find(|r| {
                r.concerns(Action::Subscribe, who)
                    && match r.permission {
                        Permission::Allow => r.topic.covers(who, filter),
                        Permission::Deny => r.topic.overlaps(who, filter),
                    }
            })
            .map_or(self.default, |r| r.permission)
            == Permission::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: Option<&'static str>, client: &'static str) -> Identity<'static> {
        Identity { user, client }
    }

    const ALICE: Identity<'static> = Identity {
        user: Some("alice"),
        client: "c1",
    };

    #[test]
    fn the_documented_example_denies_only_its_topic() {
        let rules = Rules::parse(
            "[[rule]]\naction = \"subscribe\"\ntopic = \"test/nosubscribe\"\npermission = \"deny\"\n\
             default = \"allow\"\n",
        );
        // `default` after a table belongs to the table: refused.
        assert!(rules.is_err());
        let rules = Rules::parse(
            "default = \"allow\"\n[[rule]]\naction = \"subscribe\"\n\
             topic = \"test/nosubscribe\"\npermission = \"deny\"\n",
        )
        .unwrap();
        assert!(!rules.may_subscribe(ALICE, "test/nosubscribe"));
        assert!(!rules.may_subscribe(ALICE, "test/#"));
        assert!(rules.may_subscribe(ALICE, "test/other"));
        assert!(rules.may_publish(ALICE, "test/nosubscribe"));
    }

    #[test]
    fn without_default_unmatched_requests_are_denied() {
        let rules = Rules::parse(
            "[[rule]]\naction = \"subscribe\"\ntopic = \"test/nosubscribe\"\npermission = \"deny\"\n",
        )
        .unwrap();
        assert!(!rules.may_subscribe(ALICE, "test/other"));
        assert!(!rules.may_publish(ALICE, "x"));
        assert!(Rules::parse("").unwrap().is_empty());
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = Rules::parse(
            r#"
            default = "deny"
            [[rule]]
            action = "all"
            topic = "a/secret"
            permission = "deny"
            [[rule]]
            action = "all"
            topic = "a/#"
            permission = "allow"
            [[rule]]
            action = "publish"
            topic = "b/#"
            user = "bob"
            permission = "allow"
            [[rule]]
            action = "subscribe"
            topic = "c/+"
            client = "c1"
            permission = "allow"
            "#,
        )
        .unwrap();
        assert_eq!(rules.len(), 4);
        assert!(!rules.may_publish(ALICE, "a/secret"));
        assert!(rules.may_publish(ALICE, "a/public"));
        // The deny rule shares a topic with `a/#`: the wildcard is refused,
        // while narrower filters beside it are granted.
        assert!(!rules.may_subscribe(ALICE, "a/#"));
        assert!(!rules.may_subscribe(ALICE, "a/+"));
        assert!(rules.may_subscribe(ALICE, "a/public/+"));
        // `user` and `client` match exactly.
        assert!(!rules.may_publish(ALICE, "b/x"));
        assert!(rules.may_publish(who(Some("bob"), "z"), "b/x"));
        assert!(!rules.may_publish(who(None, "bob"), "b/x"));
        assert!(rules.may_subscribe(ALICE, "c/x"));
        assert!(rules.may_subscribe(ALICE, "c/+"));
        assert!(!rules.may_subscribe(ALICE, "c/#"));
        assert!(!rules.may_subscribe(who(Some("alice"), "c2"), "c/x"));
        // Actions are separate: the subscribe rule allows no publish.
        assert!(!rules.may_publish(ALICE, "c/x"));
    }

    #[test]
    fn an_allow_rule_must_cover_the_whole_filter() {
        let rules = Rules::parse(
            "[[rule]]\naction = \"subscribe\"\ntopic = \"a/b\"\npermission = \"allow\"\n",
        )
        .unwrap();
        assert!(rules.may_subscribe(ALICE, "a/b"));
        assert!(!rules.may_subscribe(ALICE, "a/#"));
        assert!(!rules.may_subscribe(ALICE, "+/b"));
    }

    #[test]
    fn user_substitution_confines_each_user() {
        let rules = Rules::parse(
            "[[rule]]\naction = \"all\"\ntopic = \"users/%u/#\"\npermission = \"allow\"\n",
        )
        .unwrap();
        assert!(rules.may_publish(ALICE, "users/alice/x"));
        assert!(!rules.may_publish(ALICE, "users/bob/x"));
        assert!(rules.may_subscribe(ALICE, "users/alice/#"));
        assert!(!rules.may_subscribe(ALICE, "users/#"));
        assert!(!rules.may_subscribe(ALICE, "users/+/x"));
        assert!(!rules.may_subscribe(who(Some("#"), "c"), "users/#"));
        assert!(!rules.may_subscribe(who(Some("+"), "c"), "users/+/x"));
        assert!(!rules.may_publish(who(None, "c"), "users//x"));
    }

    #[test]
    fn malformed_files_are_refused_with_a_reason() {
        for (text, says) in [
            (
                "[[rule]]\naction = \"read\"\ntopic = \"a\"\npermission = \"allow\"\n",
                "read",
            ),
            (
                "[[rule]]\naction = \"all\"\ntopic = \"a/#/b\"\npermission = \"allow\"\n",
                "rule 1",
            ),
            ("[[rule]]\naction = \"all\"\ntopic = \"a\"\n", "permission"),
            (
                "[[rule]]\naction = \"all\"\ntopic = \"a\"\npermission = \"allow\"\nusr = \"x\"\n",
                "usr",
            ),
            ("default = \"maybe\"\n", "maybe"),
            ("not toml", ""),
        ] {
            let error = Rules::parse(text).expect_err(text);
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }
}
