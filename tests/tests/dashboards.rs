//! Static checks of the Grafana dashboards in `dashboards/` (there is no
//! Grafana on the test machines): they are valid JSON, reach their data
//! source only through the `datasource` variable (no hard-coded UID), give
//! every panel a query and a description, use only variables they define,
//! and cover the panels the cluster overview promises; the operations docs
//! (`docs/operations.md`) describe every panel and list every metric the
//! panels read.
//!
//! That every query returns data is checked against a real Prometheus in
//! `observability.rs`.

use std::collections::{BTreeSet, HashMap};

use anyhow::{anyhow, ensure, Context, Result};
use astramq_tests::observability::dashboards::{self, metric_families, substitute, Dashboard};
use astramq_tests::observability::workspace_root;
use serde_json::Value as Json;

/// The dashboards the issue asks for, by file name.
const DASHBOARD_FILES: [&str; 3] = [
    "astramq-node.json",
    "astramq-overview.json",
    "astramq-proxy.json",
];

/// What the cluster overview must show (matched in panel titles, any case).
const OVERVIEW_TOPICS: [&str; 7] = [
    "nodes up",
    "connections per node",
    "message rates",
    "drops",
    "redis latency",
    "stream lag",
    "proxy distribution",
];

/// The ways a panel or target may name its data source: the variable.
const DATASOURCE_REFS: [&str; 2] = ["${datasource}", "$datasource"];

#[test]
fn dashboards_are_grafana_json_that_use_a_datasource_variable() -> Result<()> {
    let all = dashboards::load_all()?;
    let names: BTreeSet<String> = all.iter().map(Dashboard::name).collect();
    ensure!(
        DASHBOARD_FILES.iter().all(|f| names.contains(*f)),
        "dashboards/ holds {names:?}, expected at least {DASHBOARD_FILES:?}"
    );
    let mut uids = BTreeSet::new();
    for dashboard in &all {
        let name = dashboard.name();
        ensure!(
            uids.insert(dashboard.uid().to_owned()) && !dashboard.uid().is_empty(),
            "{name}: missing or duplicate uid {:?}",
            dashboard.uid()
        );
        ensure!(
            dashboard.json["title"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        check_datasource_variable(dashboard)?;
        check_panels(dashboard)?;
        check_variables_defined(dashboard)?;
    }
    let by_name = |file: &str| {
        all.iter()
            .find(|d| d.name() == file)
            .expect("checked above")
    };
    check_has_query_variable(by_name("astramq-node.json"), "node")?;
    check_has_query_variable(by_name("astramq-proxy.json"), "proxy")?;
    let overview = by_name("astramq-overview.json");
    let titles: Vec<String> = overview
        .panels()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .map(str::to_lowercase)
        .collect();
    for topic in OVERVIEW_TOPICS {
        ensure!(
            titles.iter().any(|t| t.contains(topic)),
            "the cluster overview has no panel about {topic:?}; titles: {titles:?}"
        );
    }
    Ok(())
}

/// Declares a `datasource` variable of type prometheus, and every data
/// source reference in the model goes through it (no hard-coded UID).
fn check_datasource_variable(dashboard: &Dashboard) -> Result<()> {
    let name = dashboard.name();
    let variable = dashboard
        .variables()
        .into_iter()
        .find(|v| v["type"] == "datasource")
        .ok_or_else(|| anyhow!("{name}: no data source variable"))?;
    ensure!(
        variable["name"] == "datasource" && variable["query"] == "prometheus",
        "{name}: the data source variable must be `datasource` of type prometheus: {variable}"
    );
    let mut refs = Vec::new();
    collect_datasource_refs(&dashboard.json, "", &mut refs);
    ensure!(!refs.is_empty(), "{name}: nothing names a data source");
    for (at, uid) in refs {
        ensure!(
            DATASOURCE_REFS.contains(&uid.as_str()),
            "{name}: {at} names data source {uid:?} instead of the ${{datasource}} variable"
        );
    }
    Ok(())
}

/// Every `datasource` reference (object `uid` or plain string) with its
/// JSON path; Grafana's built-in annotation source is not a reference.
fn collect_datasource_refs(value: &Json, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Json::Object(object) => {
            for (key, child) in object {
                let here = format!("{path}/{key}");
                if key == "datasource" {
                    let uid = match child {
                        Json::String(s) => Some(s.clone()),
                        Json::Object(o) => o.get("uid").and_then(Json::as_str).map(str::to_owned),
                        _ => None,
                    };
                    match uid {
                        Some(uid) if uid == "-- Grafana --" => {}
                        Some(uid) => out.push((here.clone(), uid)),
                        None => {}
                    }
                }
                collect_datasource_refs(child, &here, out);
            }
        }
        Json::Array(list) => {
            for (i, child) in list.iter().enumerate() {
                collect_datasource_refs(child, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Every panel but a row has at least one non-empty query; ids are unique;
/// the grid is 24 columns wide.
fn check_panels(dashboard: &Dashboard) -> Result<()> {
    let name = dashboard.name();
    let mut ids = BTreeSet::new();
    let panels = dashboard.panels();
    ensure!(!panels.is_empty(), "{name}: no panels");
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = panel["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("{name}: panel {title:?} has no id"))?;
        ensure!(ids.insert(id), "{name}: panel id {id} used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        ensure!(
            matches!((x, w), (Some(x), Some(w)) if w >= 1 && x + w <= 24),
            "{name}: panel {title:?} has gridPos {grid} outside the 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        let queries: Vec<&str> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        ensure!(
            !queries.is_empty() && queries.iter().all(|q| !q.trim().is_empty()),
            "{name}: panel {title:?} has no query"
        );
        ensure!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: panel {title:?} has no description (the operations docs' panel list is built from them)"
        );
    }
    Ok(())
}

/// Every `$variable` in a query or a variable's own query is defined by the
/// dashboard (or is one of Grafana's built-ins).
fn check_variables_defined(dashboard: &Dashboard) -> Result<()> {
    let name = dashboard.name();
    let defined: HashMap<String, String> = dashboard
        .variables()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .map(|n| (n.to_owned(), "x".to_owned()))
        .collect();
    let mut texts: Vec<String> = dashboard.queries().into_iter().map(|q| q.expr).collect();
    texts.extend(
        dashboard
            .variables()
            .iter()
            .filter_map(|v| dashboards::variable_query(v)),
    );
    for text in texts {
        let substituted = substitute(&text, &defined);
        ensure!(
            !substituted.contains('$') && !substituted.contains("[["),
            "{name}: {text:?} uses a variable the dashboard does not define"
        );
    }
    Ok(())
}

fn check_has_query_variable(dashboard: &Dashboard, variable: &str) -> Result<()> {
    ensure!(
        dashboard
            .variables()
            .iter()
            .any(|v| v["name"] == variable && v["type"] == "query"),
        "{}: no `{variable}` query variable",
        dashboard.name()
    );
    Ok(())
}

/// The operations documentation, `docs/operations.md`. Whitespace is
/// collapsed, so a title wrapped across lines still matches.
fn operations_docs() -> Result<String> {
    let path = workspace_root().join("docs").join("operations.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn every_dashboard_panel_and_metric_is_documented() -> Result<()> {
    let docs = operations_docs()?;
    for dashboard in dashboards::load_all()? {
        for panel in dashboard.panels() {
            let title = panel["title"].as_str().unwrap_or_default();
            let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
            ensure!(
                docs.contains(&format!("*{title}*")),
                "{}: panel {title:?} is not described in the Operations docs",
                dashboard.name()
            );
        }
        for query in dashboard.queries() {
            for family in metric_families(&query.expr) {
                ensure!(
                    docs.contains(&format!("`{family}`")),
                    "{}: panel {:?} reads {family}, which the Operations docs do not list",
                    dashboard.name(),
                    query.panel,
                );
            }
        }
    }
    Ok(())
}
