//! `docs/configuration.md` against the binaries' own flag definitions: every
//! long flag `astramq-node --help` and `astramq-proxy --help` print is in
//! that binary's section of the page, every flag the page's tables list
//! exists, and where a table gives a default as a literal (in backticks) it
//! is the default the flag's help states. The defaults are written once, in
//! the flag definitions; this test keeps the page in step with them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, ensure, Context, Result};
use astramq_tests::binary::{node_binary, proxy_binary, workspace_root};

/// The heading that starts the proxy's section of the page; everything
/// above it is the node's.
const PROXY_HEADING: &str = "## Proxy (`astramq-proxy`)";

/// Runs `binary --help` and returns its standard output.
fn help_text(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", binary.display()))?;
    ensure!(
        output.status.success(),
        "{} --help failed ({}): {}",
        binary.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The long flag `text` starts with, without its dashes
/// (`--max-inflight <N>` → `max-inflight`).
fn long_flag_at(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("--")?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// Every long flag in `--help` output with the default its description
/// states (`[default: X]`, if any). Option lines are the ones that start
/// with a dash after the indentation; a flag's description follows on the
/// next lines until the next option.
fn flags_in_help(help: &str) -> BTreeMap<String, Option<String>> {
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') {
            // `-h, --help` and `--listen <LISTEN>` alike.
            current = trimmed
                .split([' ', ','])
                .find_map(long_flag_at)
                .map(str::to_owned);
            if let Some(name) = &current {
                flags.insert(name.clone(), None);
            }
            continue;
        }
        let Some(name) = &current else { continue };
        if let Some(start) = trimmed.find("[default: ") {
            let value = &trimmed[start + "[default: ".len()..];
            let value = value.split(']').next().unwrap_or_default();
            flags.insert(name.clone(), Some(value.to_owned()));
        }
    }
    flags
}

/// Whether `doc` mentions `` `--name `` as a whole flag (not as the start
/// of a longer one: `--max-topic` is not `--max-topic-length`).
fn mentions_flag(doc: &str, name: &str) -> bool {
    let needle = format!("`--{name}");
    doc.match_indices(&needle).any(|(at, _)| {
        doc[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
    })
}

/// The flags the section's tables list, with the default column when it is
/// a literal in backticks. A table row starts with `` | `--name ``; the
/// default is the last column but one (the "meaning" column is last).
fn flags_in_tables(section: &str) -> BTreeMap<String, Option<String>> {
    let mut flags = BTreeMap::new();
    for line in section.lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let Some(name) = long_flag_at(row) else {
            continue;
        };
        // `\|` inside a cell is an escaped bar, not a column border.
        let line = line.replace("\\|", "/");
        let cells: Vec<&str> = line
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let default = cells
            .len()
            .checked_sub(2)
            .and_then(|i| cells.get(i))
            .and_then(|cell| cell.strip_prefix('`')?.strip_suffix('`'))
            .map(str::to_owned);
        flags.entry(name.to_owned()).or_insert(default);
    }
    flags
}

/// Checks one binary's help against its section of the page.
fn check(binary: &str, help: &str, section: &str) -> Result<()> {
    let in_help = flags_in_help(help);
    ensure!(
        in_help.contains_key("listen") && in_help.contains_key("help"),
        "{binary} --help did not parse into flags:\n{help}"
    );
    let missing: Vec<&String> = in_help
        .keys()
        .filter(|name| !mentions_flag(section, name))
        .collect();
    ensure!(
        missing.is_empty(),
        "docs/configuration.md does not document these {binary} flags: {missing:?}"
    );
    let in_tables = flags_in_tables(section);
    let unknown: BTreeSet<&String> = in_tables
        .keys()
        .filter(|name| !in_help.contains_key(*name))
        .collect();
    ensure!(
        unknown.is_empty(),
        "docs/configuration.md lists {binary} flags that --help does not know: {unknown:?}"
    );
    for (name, documented) in &in_tables {
        let (Some(documented), Some(Some(actual))) = (documented, in_help.get(name)) else {
            continue;
        };
        ensure!(
            actual.starts_with(documented.as_str()),
            "docs/configuration.md gives `--{name}` of {binary} the default `{documented}`, its --help says [default: {actual}]"
        );
    }
    Ok(())
}

/// The page, split into the node's and the proxy's sections.
fn sections() -> Result<(String, String)> {
    let path = workspace_root().join("docs").join("configuration.md");
    let doc =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let at = doc
        .find(PROXY_HEADING)
        .ok_or_else(|| anyhow!("docs/configuration.md has no {PROXY_HEADING:?} section"))?;
    Ok((doc[..at].to_owned(), doc[at..].to_owned()))
}

#[test]
fn every_node_flag_is_documented_with_its_default() -> Result<()> {
    let (node, _) = sections()?;
    check("astramq-node", &help_text(&node_binary()?)?, &node)
}

#[test]
fn every_proxy_flag_is_documented_with_its_default() -> Result<()> {
    let (_, proxy) = sections()?;
    check("astramq-proxy", &help_text(&proxy_binary()?)?, &proxy)
}

#[test]
fn help_parsing_finds_flags_and_their_defaults() {
    let help = "Options:\n      --listen <LISTEN>\n          MQTT address [default: 0.0.0.0:1883]\n\n          [env: ASTRAMQ_LISTEN=]\n\n      --proxy-protocol[=<PROXY_PROTOCOL>]\n          Send it [default: false]\n\n  -h, --help\n          Print help\n";
    let flags = flags_in_help(help);
    assert_eq!(flags["listen"].as_deref(), Some("0.0.0.0:1883"));
    assert_eq!(flags["proxy-protocol"].as_deref(), Some("false"));
    assert_eq!(flags["help"], None);
    assert!(mentions_flag(
        "a `--max-topic-length BYTES` b",
        "max-topic-length"
    ));
    assert!(!mentions_flag(
        "a `--max-topic-length BYTES` b",
        "max-topic"
    ));
    let table = "| `--cluster-mode routed\\|broadcast` | `routed` | how |\n| `--threads N` | CPUs | workers |\n";
    let rows = flags_in_tables(table);
    assert_eq!(rows["cluster-mode"].as_deref(), Some("routed"));
    assert_eq!(rows["threads"], None);
}
