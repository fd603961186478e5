//! The Grafana dashboards in `dashboards/`, read the way Grafana reads them:
//! panels (rows included), their PromQL targets, and the template variables
//! a query is written with.
//!
//! Grafana itself is not available to the tests, so a dashboard is checked
//! by doing Grafana's part by hand: resolve each variable against a real
//! Prometheus (`label_values(selector, label)` → the series API), substitute
//! the variables and Grafana's built-ins into every expression, and let
//! Prometheus evaluate the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::prometheus::PrometheusServer;
use super::workspace_root;

/// What `$__rate_interval` and `$__interval` stand for in tests. Grafana
/// computes them from the scrape interval (1 s in the tests) and the panel
/// width; 30 s spans many scrapes, so every rate has samples.
pub const TEST_RATE_INTERVAL: &str = "30s";

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// Where it was read from.
    pub path: PathBuf,
    /// The whole JSON model.
    pub json: Value,
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The panel's title.
    pub panel: String,
    /// The target's `refId` (A, B, ...).
    pub ref_id: String,
    /// The PromQL expression, variables unsubstituted.
    pub expr: String,
}

/// The dashboards directory of the workspace.
pub fn dashboards_dir() -> PathBuf {
    workspace_root().join("dashboards")
}

/// Reads every `*.json` in `dashboards/`, in file-name order.
pub fn load_all() -> Result<Vec<Dashboard>> {
    let dir = dashboards_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|path| Dashboard::load(path)).collect()
}

impl Dashboard {
    /// Reads and parses one dashboard file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            json,
        })
    }

    /// The file name, for messages.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The dashboard's `uid`.
    pub fn uid(&self) -> &str {
        self.json["uid"].as_str().unwrap_or_default()
    }

    /// Every panel, with the panels of collapsed rows (kept inside the
    /// row's own `panels`) flattened in.
    pub fn panels(&self) -> Vec<&Value> {
        let mut out = Vec::new();
        for panel in self.json["panels"].as_array().into_iter().flatten() {
            out.push(panel);
            out.extend(panel["panels"].as_array().into_iter().flatten());
        }
        out
    }

    /// Every template variable, in declaration order.
    pub fn variables(&self) -> Vec<&Value> {
        self.json["templating"]["list"]
            .as_array()
            .map(|list| list.iter().collect())
            .unwrap_or_default()
    }

    /// Every PromQL query of every panel.
    pub fn queries(&self) -> Vec<PanelQuery> {
        let mut out = Vec::new();
        for panel in self.panels() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(PanelQuery {
                        panel: title.to_owned(),
                        ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                        expr: expr.to_owned(),
                    });
                }
            }
        }
        out
    }

    /// Resolves every query variable against `prometheus` the way Grafana
    /// would on load, in declaration order (later variables may use earlier
    /// ones). A variable named in `preferred` takes that value if it is one
    /// of the options; otherwise the first option (sorted) is taken, as
    /// Grafana does when nothing is selected yet.
    pub fn resolve_variables(
        &self,
        prometheus: &PrometheusServer,
        preferred: &HashMap<String, String>,
    ) -> Result<HashMap<String, String>> {
        let mut values = HashMap::new();
        for variable in self.variables() {
            let name = variable["name"].as_str().unwrap_or_default().to_owned();
            let value = match variable["type"].as_str().unwrap_or_default() {
                // Data source variables only pick where queries go.
                "datasource" => continue,
                "query" => {
                    let query = variable_query(variable)
                        .ok_or_else(|| anyhow!("variable {name} has no query"))?;
                    let query = substitute(&query, &values);
                    let mut options = label_values(prometheus, &query)
                        .with_context(|| format!("resolving ${name} = {query}"))?;
                    options.sort();
                    options.dedup();
                    match preferred.get(&name) {
                        Some(wanted) if options.contains(wanted) => wanted.clone(),
                        _ => options.into_iter().next().ok_or_else(|| {
                            anyhow!("variable ${name} ({query}) has no options in Prometheus")
                        })?,
                    }
                }
                "custom" | "constant" | "textbox" => variable["query"]
                    .as_str()
                    .unwrap_or_default()
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                other => bail!("variable ${name} has a type ({other}) the tests cannot resolve"),
            };
            values.insert(name, value);
        }
        Ok(values)
    }
}

/// A query variable's query: a string, or `{"query": "..."}` (newer Grafana).
pub fn variable_query(variable: &Value) -> Option<String> {
    match &variable["query"] {
        Value::String(query) => Some(query.clone()),
        Value::Object(object) => object.get("query")?.as_str().map(str::to_owned),
        _ => variable["definition"].as_str().map(str::to_owned),
    }
}

/// Evaluates Grafana's `label_values(selector, label)` / `label_values(label)`.
fn label_values(prometheus: &PrometheusServer, query: &str) -> Result<Vec<String>> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| anyhow!("only label_values(...) variables are supported, got {query}"))?;
    let (selector, label) = match inner.rsplit_once(',') {
        Some((selector, label)) => (selector.trim().to_owned(), label.trim()),
        None => (format!("{{{}=~\".+\"}}", inner.trim()), inner.trim()),
    };
    Ok(prometheus
        .series(&selector)?
        .into_iter()
        .filter_map(|labels| labels.get(label).cloned())
        .collect())
}

/// Replaces Grafana variables in `text`: `$name`, `${name}`, `${name:fmt}`
/// and `[[name]]` from `values`, and the built-ins `$__rate_interval`,
/// `$__interval` and `$__range` with [`TEST_RATE_INTERVAL`]. A name is read
/// whole (`$node_job` is never `$node` + `_job`); unknown names are left as
/// they are, so Prometheus reports them.
pub fn substitute(text: &str, values: &HashMap<String, String>) -> String {
    let lookup = |name: &str| -> Option<String> {
        match name {
            "__rate_interval" | "__interval" | "__range" => Some(TEST_RATE_INTERVAL.to_owned()),
            _ => values.get(name).cloned(),
        }
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let (name, used) = if let Some(braced) = tail.strip_prefix("${") {
            match braced.find('}') {
                Some(end) => {
                    let name = braced[..end].split(':').next().unwrap_or_default();
                    (name, end + 3)
                }
                None => ("", 0),
            }
        } else if let Some(bracketed) = tail.strip_prefix("[[") {
            match bracketed.find("]]") {
                Some(end) => (&bracketed[..end], end + 4),
                None => ("", 0),
            }
        } else if let Some(plain) = tail.strip_prefix('$') {
            let end = plain.find(|c: char| !is_name(c)).unwrap_or(plain.len());
            (&plain[..end], end + 1)
        } else {
            ("", 0)
        };
        match (used, lookup(name)) {
            (used, Some(value)) if used > 0 => {
                out.push_str(&value);
                rest = &tail[used..];
            }
            _ => {
                let first = tail.chars().next().map_or(1, char::len_utf8);
                out.push_str(&tail[..first]);
                rest = &tail[first..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Names of `astramq_*` metrics an expression reads, with the histogram
/// suffixes (`_bucket`, `_count`, `_sum`) removed.
pub fn metric_families(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(pos) = rest.find("astramq_") {
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_count", "_sum"] {
            if let Some(family) = name.strip_suffix(suffix) {
                if family.ends_with("_seconds") {
                    name = family;
                }
            }
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_whole_names_and_builtins() {
        let values: HashMap<String, String> = [
            ("node".to_owned(), "127.0.0.1:9102".to_owned()),
            ("node_job".to_owned(), "astramq-node".to_owned()),
        ]
        .into();
        assert_eq!(
            substitute(
                r#"rate(x{job="$node_job",instance="${node}"}[$__rate_interval]) [[node]]"#,
                &values
            ),
            r#"rate(x{job="astramq-node",instance="127.0.0.1:9102"}[30s]) 127.0.0.1:9102"#
        );
        assert_eq!(
            substitute("${node:regex} $unknown", &values),
            "127.0.0.1:9102 $unknown"
        );
        assert_eq!(substitute("a[5m] $", &values), "a[5m] $");
    }

    #[test]
    fn finds_metric_families() {
        assert_eq!(
            metric_families(
                "histogram_quantile(0.9, rate(astramq_redis_command_duration_seconds_bucket[1m])) \
                 / astramq_messages_sent_total + astramq_redis_command_duration_seconds_count"
            ),
            [
                "astramq_redis_command_duration_seconds",
                "astramq_messages_sent_total"
            ]
        );
    }
}
