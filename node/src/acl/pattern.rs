//! A rule's topic filter, with `%u` / `%c` substituted, and the three
//! questions the ACL asks of it: does it match a topic name, does it cover
//! a requested filter (every topic of the request is one of the rule's),
//! and does it overlap one (some topic is both).
//!
//! Substitution is literal: the user name or client id becomes text, never
//! wildcards. A `+` or `#` from a name is a literal level (which no topic
//! name can have, so it matches nothing a client could publish), and a `/`
//! from a name splits levels exactly as the name spells them. Only the
//! wildcards written in the rule itself are wildcards.

/// One level of a rule's filter as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// Text without placeholders.
    Text(String),
    /// Text with `%u` / `%c` in it, substituted per client.
    Template(String),
    /// `+`.
    Single,
    /// `#` (last level only).
    Multi,
}

/// A rule's topic filter, parsed once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    levels: Vec<Written>,
}

/// One level after substitution: literal text or one of the rule's wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level<'a> {
    Literal(std::borrow::Cow<'a, str>),
    Single,
    Multi,
}

/// Who the rule is judged for: `None` user for an anonymous client.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The CONNECT's user name.
    pub user: Option<&'a str>,
    /// The session's client id (assigned, if the client sent none).
    pub client: &'a str,
}

impl Pattern {
    /// Parses a rule's `topic`; `None` if it is not a valid MQTT filter.
    pub fn parse(filter: &str) -> Option<Pattern> {
        if !crate::router::topic::is_valid_filter(filter) {
            return None;
        }
        let levels = filter
            .split('/')
            .map(|level| match level {
                "+" => Written::Single,
                "#" => Written::Multi,
                text if text.contains("%u") || text.contains("%c") => {
                    Written::Template(text.to_owned())
                }
                text => Written::Text(text.to_owned()),
            })
            .collect();
        Some(Pattern { levels })
    }

    /// Whether the filter uses `%u` (so it never applies to anonymous
    /// clients).
    fn needs_user(&self) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, Written::Template(t) if t.contains("%u")))
    }

    /// The levels for `who`; `None` when the filter names a user and the
    /// client has none.
    fn expand<'a>(&'a self, who: Identity<'_>) -> Option<Vec<Level<'a>>> {
        if self.needs_user() && who.user.is_none() {
            return None;
        }
        let mut levels = Vec::with_capacity(self.levels.len());
        for written in &self.levels {
            match written {
                Written::Text(text) => levels.push(Level::Literal(text.as_str().into())),
                Written::Single => levels.push(Level::Single),
                Written::Multi => levels.push(Level::Multi),
                Written::Template(text) => {
                    let text = text
                        .replace("%u", who.user.unwrap_or_default())
                        .replace("%c", who.client);
                    // A `/` from a name separates levels like any other.
                    for part in text.split('/') {
                        levels.push(Level::Literal(part.to_owned().into()));
                    }
                }
            }
        }
        Some(levels)
    }

    /// True when topic name `topic` is one of the filter's topics for `who`.
    pub fn matches_topic(&self, who: Identity<'_>, topic: &str) -> bool {
        self.expand(who)
            .is_some_and(|rule| matches_topic(&rule, topic))
    }

    /// True when every topic of the requested filter `filter` is one of
    /// the rule's for `who`.
    pub fn covers(&self, who: Identity<'_>, filter: &str) -> bool {
        self.expand(who)
            .is_some_and(|rule| covers(&rule, &requested(filter)))
    }

    /// True when some topic is both one of the rule's for `who` and one of
    /// the requested filter's.
    pub fn overlaps(&self, who: Identity<'_>, filter: &str) -> bool {
        self.expand(who)
            .is_some_and(|rule| overlaps(&rule, &requested(filter)))
    }
}

/// A client's filter: its `+` and `#` are wildcards.
fn requested(filter: &str) -> Vec<Level<'_>> {
    filter
        .split('/')
        .map(|level| match level {
            "+" => Level::Single,
            "#" => Level::Multi,
            text => Level::Literal(text.into()),
        })
        .collect()
}

fn is_wildcard(level: Option<&Level<'_>>) -> bool {
    matches!(level, Some(Level::Single | Level::Multi))
}

fn is_dollar(level: Option<&Level<'_>>) -> bool {
    matches!(level, Some(Level::Literal(text)) if text.starts_with('$'))
}

/// MQTT matching (a leading wildcard does not match `$` topics).
fn matches_topic(rule: &[Level<'_>], topic: &str) -> bool {
    if topic.starts_with('$') && is_wildcard(rule.first()) {
        return false;
    }
    let mut names = topic.split('/');
    for level in rule {
        match (level, names.next()) {
            (Level::Multi, _) => return true,
            (Level::Single, Some(_)) => {}
            (Level::Literal(expected), Some(actual)) if expected == actual => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

/// Every topic `request` matches, `rule` matches too.
fn covers(rule: &[Level<'_>], request: &[Level<'_>]) -> bool {
    // A rule starting with a wildcard matches no `$` topic.
    if is_wildcard(rule.first()) && is_dollar(request.first()) {
        return false;
    }
    let mut request = request.iter();
    for level in rule {
        match (level, request.next()) {
            // `#` covers what is left, and the parent level (`a/#` matches `a`).
            (Level::Multi, _) => return true,
            (Level::Single, Some(Level::Literal(_) | Level::Single)) => {}
            (Level::Literal(a), Some(Level::Literal(b))) if a == b => {}
            _ => return false,
        }
    }
    request.next().is_none()
}

/// Some topic matches both `rule` and `request`.
fn overlaps(rule: &[Level<'_>], request: &[Level<'_>]) -> bool {
    let dollar_only =
        |a: &[Level<'_>], b: &[Level<'_>]| is_wildcard(a.first()) && is_dollar(b.first());
    if dollar_only(rule, request) || dollar_only(request, rule) {
        return false;
    }
    let (mut a, mut b) = (rule.iter(), request.iter());
    loop {
        match (a.next(), b.next()) {
            (Some(Level::Multi), _) | (_, Some(Level::Multi)) => return true,
            (None, None) => return true,
            (Some(Level::Single), Some(_)) | (Some(_), Some(Level::Single)) => {}
            (Some(Level::Literal(x)), Some(Level::Literal(y))) if x == y => {}
            // Different text, or one ended before the other (only a final
            // `#`, handled above, matches its parent level).
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Identity<'static> = Identity {
        user: Some("alice"),
        client: "c1",
    };

    fn p(filter: &str) -> Pattern {
        Pattern::parse(filter).expect("valid filter")
    }

    #[test]
    fn topics_match_like_mqtt() {
        assert!(p("a/+/c").matches_topic(ALICE, "a/b/c"));
        assert!(p("a/#").matches_topic(ALICE, "a"));
        assert!(p("a/#").matches_topic(ALICE, "a/b/c"));
        assert!(!p("a/b").matches_topic(ALICE, "a/b/c"));
        assert!(!p("#").matches_topic(ALICE, "$SYS/x"));
        assert!(p("$SYS/#").matches_topic(ALICE, "$SYS/x"));
        assert!(Pattern::parse("a/#/b").is_none());
    }

    #[test]
    fn a_rule_covers_only_filters_within_it() {
        assert!(p("a/b").covers(ALICE, "a/b"));
        assert!(!p("a/b").covers(ALICE, "a/#"));
        assert!(!p("a/b").covers(ALICE, "a/+"));
        assert!(p("a/+").covers(ALICE, "a/b"));
        assert!(p("a/+").covers(ALICE, "a/+"));
        assert!(!p("a/+").covers(ALICE, "a/#"));
        assert!(!p("a/+").covers(ALICE, "a/b/c"));
        assert!(p("a/#").covers(ALICE, "a/#"));
        assert!(p("a/#").covers(ALICE, "a"));
        assert!(p("a/#").covers(ALICE, "a/+/c"));
        assert!(p("#").covers(ALICE, "+/x"));
        assert!(!p("#").covers(ALICE, "$SYS/#"));
        assert!(!p("+/b").covers(ALICE, "+/#"));
    }

    #[test]
    fn overlap_is_any_common_topic() {
        assert!(p("a/b").overlaps(ALICE, "a/#"));
        assert!(p("a/b").overlaps(ALICE, "+/b"));
        assert!(p("a/#").overlaps(ALICE, "a"));
        assert!(p("a").overlaps(ALICE, "a/#"));
        assert!(p("+/+").overlaps(ALICE, "a/+"));
        assert!(!p("a/b").overlaps(ALICE, "a/c"));
        assert!(!p("a/b").overlaps(ALICE, "a/b/c"));
        assert!(!p("a/+").overlaps(ALICE, "a"));
        assert!(!p("#").overlaps(ALICE, "$SYS/x"));
        assert!(!p("$SYS/x").overlaps(ALICE, "#"));
        assert!(p("#").overlaps(ALICE, "#"));
    }

    #[test]
    fn names_are_substituted_literally() {
        let rule = p("users/%u/#");
        assert!(rule.matches_topic(ALICE, "users/alice/x"));
        assert!(!rule.matches_topic(ALICE, "users/bob/x"));
        assert!(p("dev/%c-%u").matches_topic(ALICE, "dev/c1-alice"));
        // No user name: a `%u` rule never applies.
        let anonymous = Identity {
            user: None,
            client: "c1",
        };
        assert!(!rule.matches_topic(anonymous, "users//x"));
        assert!(!rule.covers(anonymous, "users//x"));
        // `+` and `#` in a name are text, never wildcards.
        let plus = Identity {
            user: Some("+"),
            client: "c",
        };
        assert!(!rule.matches_topic(plus, "users/bob/x"));
        assert!(!rule.covers(plus, "users/+/#"));
        assert!(!p("users/%u").covers(plus, "users/+"));
        assert!(p("users/%u").overlaps(plus, "users/+"));
        let hash = Identity {
            user: Some("#"),
            client: "c",
        };
        assert!(!p("users/%u").matches_topic(hash, "users/bob"));
        assert!(!p("users/%u").covers(hash, "users/#"));
        // A `/` in a name stays inside that name's levels.
        let slash = Identity {
            user: Some("a/b"),
            client: "c",
        };
        assert!(p("users/%u").matches_topic(slash, "users/a/b"));
        assert!(!p("users/%u").matches_topic(slash, "users/a"));
        assert!(!p("users/%u").covers(slash, "users/a/+"));
    }
}
