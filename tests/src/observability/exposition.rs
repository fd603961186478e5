//! Reading the Prometheus text format that `/metrics` serves, so tests can
//! assert on a binary's metrics directly (before Prometheus is involved).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{anyhow, ensure, Result};

use super::http;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name as written (`_bucket`/`_count`/`_sum` included).
    pub name: String,
    /// The labels, in name order.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Every sample line, in page order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Fetches and parses `http://addr/metrics`.
    pub fn scrape(addr: SocketAddr) -> Result<Self> {
        let response = http::get(addr, "/metrics")?;
        ensure!(
            response.status == 200,
            "GET http://{addr}/metrics answered {}",
            response.status
        );
        Self::parse(&response.body)
    }

    /// Parses the text format (comments skipped, timestamps not expected).
    pub fn parse(text: &str) -> Result<Self> {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(parse_line)
            .collect::<Result<_>>()?;
        Ok(Self { samples })
    }

    /// Whether a metric family is present: a sample named `family` or, for
    /// a histogram, `family_bucket`.
    pub fn has_family(&self, family: &str) -> bool {
        let bucket = format!("{family}_bucket");
        self.samples
            .iter()
            .any(|s| s.name == family || s.name == bucket)
    }

    /// Sum of the samples named `name` whose labels include every `(k, v)`
    /// of `matching`; `None` when there is no such sample.
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for sample in self.samples.iter().filter(|s| s.name == name) {
            if matching
                .iter()
                .all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v))
            {
                *found.get_or_insert(0.0) += sample.value;
            }
        }
        found
    }

    /// Like [`Exposition::sum`], but 0 when absent.
    pub fn total(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.sum(name, matching).unwrap_or(0.0)
    }
}

/// Parses `name{a="x",b="y"} 1.5`.
fn parse_line(line: &str) -> Result<Sample> {
    let bad = || anyhow!("unparsable metrics line {line:?}");
    let (series, value) = line.rsplit_once(' ').ok_or_else(bad)?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().map_err(|_| bad())?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').ok_or_else(bad)?;
            (name, parse_labels(body).ok_or_else(bad)?)
        }
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"` (with `\"`, `\\` and `\n` escapes in values).
fn parse_labels(body: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_sums_by_label() {
        let page = Exposition::parse(
            "# HELP x y\n# TYPE a counter\na{qos=\"0\"} 2\na{qos=\"1\"} 3\n\
             h_bucket{op=\"x\",le=\"+Inf\"} 4\nb 1e3\nc{v=\"q\\\"uote,\"} 1\n",
        )
        .unwrap();
        assert_eq!(page.sum("a", &[]), Some(5.0));
        assert_eq!(page.sum("a", &[("qos", "1")]), Some(3.0));
        assert_eq!(page.sum("b", &[]), Some(1000.0));
        assert_eq!(page.sum("c", &[("v", "q\"uote,")]), Some(1.0));
        assert_eq!(page.sum("missing", &[]), None);
        assert!(page.has_family("h"));
        assert!(!page.has_family("missing"));
    }
}
