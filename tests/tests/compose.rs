//! Static checks of the Compose stack in `compose/` (there is no Docker
//! daemon on the test machines, so the file is parsed, not run):
//!
//! - `compose/docker-compose.yml` parses; every file it mounts or builds
//!   from exists; the Dockerfile has the stages it names; Redis runs with
//!   an append-only file; the proxy publishes 1883;
//! - Prometheus's targets are exactly the services with a metrics port, on
//!   that port; the gossip seeds, Redis URL, Grafana data source and
//!   dashboard folder point at what the file defines;
//! - `compose/prometheus.yml` is what `scripts/render-prometheus-config`
//!   renders from the template (so the test's and `scripts/start`'s configs
//!   are the same file with other ports).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Context, Result};
use astramq_tests::observability::dashboards;
use astramq_tests::observability::prometheus::render_config_raw;
use astramq_tests::observability::workspace_root;
use serde_yaml::Value as Yaml;

fn compose_dir() -> PathBuf {
    workspace_root().join("compose")
}

fn read_yaml(path: &Path) -> Result<Yaml> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))
}

/// A YAML string or a list of strings (Compose allows both for `command`).
fn strings(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Yaml::Sequence(list) => list
            .iter()
            .filter_map(|v| match v {
                Yaml::String(s) => Some(s.clone()),
                Yaml::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The value of `--name` in a command (`--name=value` or `--name value`).
fn flag(command: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    command.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix(&prefix) {
            Some(value.to_owned())
        } else if arg == name {
            command.get(i + 1).cloned()
        } else {
            None
        }
    })
}

/// `host:port` → port.
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// The Compose file's services, by name.
struct Compose {
    root: Yaml,
    services: BTreeMap<String, Yaml>,
}

impl Compose {
    fn load() -> Result<Self> {
        let root = read_yaml(&compose_dir().join("docker-compose.yml"))?;
        let services = root["services"]
            .as_mapping()
            .ok_or_else(|| anyhow!("docker-compose.yml has no services"))?
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
            .collect();
        Ok(Self { root, services })
    }

    fn service(&self, name: &str) -> Result<&Yaml> {
        self.services
            .get(name)
            .ok_or_else(|| anyhow!("docker-compose.yml has no service {name:?}"))
    }

    fn command(&self, name: &str) -> Result<Vec<String>> {
        Ok(strings(&self.service(name)?["command"]))
    }

    /// `(host path, container path)` of every bind mount of a service.
    fn bind_mounts(&self, name: &str) -> Result<Vec<(PathBuf, String)>> {
        let mut out = Vec::new();
        for volume in strings(&self.service(name)?["volumes"]) {
            let mut parts = volume.split(':');
            let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
                continue;
            };
            if source.starts_with('.') || source.starts_with('/') {
                out.push((compose_dir().join(source), target.to_owned()));
            }
        }
        Ok(out)
    }

    /// The host path mounted at `container` in a service (exact mount point
    /// or a file below it).
    fn host_path(&self, service: &str, container: &str) -> Result<PathBuf> {
        for (host, target) in self.bind_mounts(service)? {
            if container == target {
                return Ok(host);
            }
            if let Some(rest) = container.strip_prefix(&format!("{target}/")) {
                return Ok(host.join(rest));
            }
        }
        Err(anyhow!("{service} mounts nothing at {container}"))
    }

    /// The service's fixed address on the `astramq` network.
    fn ipv4(&self, name: &str) -> Option<Ipv4Addr> {
        self.services.get(name)?["networks"]["astramq"]["ipv4_address"]
            .as_str()?
            .parse()
            .ok()
    }
}

/// Every `--metrics-listen`, by service.
fn metrics_ports(compose: &Compose) -> Result<BTreeMap<String, u16>> {
    let mut out = BTreeMap::new();
    for name in compose.services.keys() {
        if let Some(addr) = flag(&compose.command(name)?, "--metrics-listen") {
            let port =
                port_of(&addr).ok_or_else(|| anyhow!("{name}: bad --metrics-listen {addr}"))?;
            out.insert(name.clone(), port);
        }
    }
    Ok(out)
}

/// `job → [host:port]` of a Prometheus config.
fn scrape_targets(config: &Yaml) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for job in config["scrape_configs"].as_sequence().into_iter().flatten() {
        let name = job["job_name"].as_str().unwrap_or_default().to_owned();
        let targets = job["static_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|c| strings(&c["targets"]))
            .collect();
        out.insert(name, targets);
    }
    out
}

#[test]
fn compose_file_parses_and_everything_it_mounts_and_builds_exists() -> Result<()> {
    let compose = Compose::load()?;
    for service in [
        "redis",
        "node1",
        "node2",
        "node3",
        "proxy",
        "prometheus",
        "grafana",
    ] {
        compose.service(service)?;
    }
    // Redis persists with an append-only file.
    let redis = compose.command("redis")?;
    ensure!(
        flag(&redis, "--appendonly").as_deref() == Some("yes"),
        "redis must run with --appendonly yes: {redis:?}"
    );
    let declared_volumes: BTreeSet<String> = compose.root["volumes"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.as_str().map(str::to_owned))
        .collect();
    let dockerfile_stages = |path: &Path| -> Result<BTreeSet<String>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    [from, _, as_, stage]
                        if from.eq_ignore_ascii_case("FROM") && as_.eq_ignore_ascii_case("AS") =>
                    {
                        Some(stage.to_string())
                    }
                    _ => None,
                }
            })
            .collect())
    };
    for (name, service) in &compose.services {
        for (host, _) in compose.bind_mounts(name)? {
            ensure!(
                host.exists(),
                "{name} mounts {}, which does not exist",
                host.display()
            );
        }
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap_or_default();
            if !(source.starts_with('.') || source.starts_with('/')) {
                ensure!(
                    declared_volumes.contains(source),
                    "{name} uses volume {source:?}, not declared under volumes:"
                );
            }
        }
        let build = &service["build"];
        if !build.is_null() {
            let context = compose_dir().join(build["context"].as_str().unwrap_or("."));
            ensure!(
                context.is_dir(),
                "{name}: build context {} missing",
                context.display()
            );
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            let stages = dockerfile_stages(&dockerfile)?;
            if let Some(target) = build["target"].as_str() {
                ensure!(
                    stages.contains(target),
                    "{name}: {} has no stage {target:?} (stages: {stages:?})",
                    dockerfile.display()
                );
            }
        } else {
            ensure!(
                service["image"].is_string(),
                "{name} has neither build nor image"
            );
        }
    }
    // Both binaries come from the multi-stage Dockerfile.
    for (service, binary) in [("node1", "astramq-node"), ("proxy", "astramq-proxy")] {
        let target = compose.service(service)?["build"]["target"]
            .as_str()
            .unwrap_or_default();
        let text = std::fs::read_to_string(compose_dir().join("Dockerfile"))?;
        ensure!(
            text.contains(&format!("AS {target}"))
                && text.contains(&format!("ENTRYPOINT [\"{binary}\"]")),
            "compose/Dockerfile must build {binary} in stage {target:?}"
        );
    }
    // The proxy is the front door on 1883.
    let proxy_ports = strings(&compose.service("proxy")?["ports"]);
    ensure!(
        proxy_ports.iter().any(|p| p.starts_with("127.0.0.1:1883:")),
        "the proxy must publish port 1883: {proxy_ports:?}"
    );
    Ok(())
}

#[test]
fn compose_gossip_is_keyed_and_published_ports_bind_loopback() -> Result<()> {
    let compose = Compose::load()?;
    // Every gossip member holds the same key (an example, overridable by
    // ASTRAMQ_GOSSIP_KEY), in its environment rather than on its command
    // line (where `ps` would show it).
    let mut keys = BTreeSet::new();
    for (name, service) in &compose.services {
        let command = compose.command(name)?;
        if flag(&command, "--gossip-listen").is_none() {
            continue;
        }
        ensure!(
            flag(&command, "--gossip-key").is_none(),
            "{name}: the gossip key belongs in the environment, not the command"
        );
        let key = service["environment"]["ASTRAMQ_GOSSIP_KEY"]
            .as_str()
            .ok_or_else(|| anyhow!("{name} gossips without ASTRAMQ_GOSSIP_KEY"))?;
        let example = key
            .strip_prefix("${ASTRAMQ_GOSSIP_KEY:-")
            .and_then(|rest| rest.strip_suffix('}'))
            .ok_or_else(|| anyhow!("{name}: the key must be ${{ASTRAMQ_GOSSIP_KEY:-example}}"))?;
        ensure!(
            example.len() == 44,
            "{name}: the example key is not 32 bytes of base64"
        );
        keys.insert(example.to_owned());
    }
    ensure!(
        keys.len() == 1,
        "gossip members disagree on the key: {keys:?}"
    );
    // Published ports are for this host only.
    for (name, service) in &compose.services {
        for port in strings(&service["ports"]) {
            ensure!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} on every interface of the host"
            );
        }
    }
    Ok(())
}

#[test]
fn compose_services_ports_and_prometheus_targets_agree() -> Result<()> {
    let compose = Compose::load()?;
    // Prometheus reads the mounted config it is told to read.
    let prometheus_cmd = compose.command("prometheus")?;
    let config_in_container = flag(&prometheus_cmd, "--config.file")
        .ok_or_else(|| anyhow!("prometheus has no --config.file"))?;
    let config_path = compose.host_path("prometheus", &config_in_container)?;
    ensure!(
        config_path == compose_dir().join("./prometheus.yml"),
        "prometheus must read compose/prometheus.yml, reads {}",
        config_path.display()
    );
    let config = read_yaml(&config_path)?;
    let jobs = scrape_targets(&config);

    // Every target is a service's metrics port, and every service with a
    // metrics port is scraped, by the job of its kind.
    let ports = metrics_ports(&compose)?;
    let mut scraped = BTreeSet::new();
    for (job, targets) in &jobs {
        for target in targets {
            let (host, port) = target
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("target {target} has no port"))?;
            let expected = ports.get(host).ok_or_else(|| {
                anyhow!("job {job} scrapes {target}: no service {host} with --metrics-listen")
            })?;
            ensure!(
                port.parse::<u16>().ok() == Some(*expected),
                "job {job} scrapes {target}, but {host} serves metrics on port {expected}"
            );
            scraped.insert(host.to_owned());
        }
    }
    let unscraped: Vec<&String> = ports.keys().filter(|s| !scraped.contains(*s)).collect();
    ensure!(
        unscraped.is_empty(),
        "services with metrics nobody scrapes: {unscraped:?}"
    );
    let hosts = |job: &str| -> BTreeSet<String> {
        jobs.get(job)
            .into_iter()
            .flatten()
            .filter_map(|t| t.rsplit_once(':').map(|(h, _)| h.to_owned()))
            .collect()
    };
    ensure!(
        hosts("astramq-node") == ["node1", "node2", "node3"].map(String::from).into(),
        "astramq-node job scrapes {:?}",
        hosts("astramq-node")
    );
    ensure!(
        hosts("astramq-proxy") == ["proxy".to_owned()].into(),
        "astramq-proxy job scrapes {:?}",
        hosts("astramq-proxy")
    );

    // Nodes reach the redis service; gossip seeds are the members' fixed
    // addresses and gossip ports, inside the network's subnet.
    let subnet = compose.root["networks"]["astramq"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .ok_or_else(|| anyhow!("the astramq network has no subnet"))?;
    let (net, bits) = subnet
        .split_once('/')
        .and_then(|(ip, bits)| Some((ip.parse::<Ipv4Addr>().ok()?, bits.parse::<u32>().ok()?)))
        .ok_or_else(|| anyhow!("bad subnet {subnet}"))?;
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    let mut gossip_by_addr = BTreeMap::new();
    for member in ["node1", "node2", "node3", "proxy"] {
        let ip = compose
            .ipv4(member)
            .ok_or_else(|| anyhow!("{member} has no fixed ipv4_address on the astramq network"))?;
        ensure!(
            u32::from(ip) & mask == u32::from(net) & mask,
            "{member}'s address {ip} is outside {subnet}"
        );
        let listen = flag(&compose.command(member)?, "--gossip-listen")
            .ok_or_else(|| anyhow!("{member} has no --gossip-listen"))?;
        ensure!(
            listen.starts_with(&format!("{ip}:")),
            "{member} gossips on {listen}, not on its address {ip}"
        );
        gossip_by_addr.insert(listen, member);
    }
    for member in ["node1", "node2", "node3", "proxy"] {
        let command = compose.command(member)?;
        let seeds = flag(&command, "--join").ok_or_else(|| anyhow!("{member} has no --join"))?;
        for seed in seeds.split(',') {
            let seed_member = gossip_by_addr
                .get(seed)
                .ok_or_else(|| anyhow!("{member} joins {seed}, which no member gossips on"))?;
            ensure!(*seed_member != member, "{member} lists itself as a seed");
        }
        if member != "proxy" {
            let redis =
                flag(&command, "--redis").ok_or_else(|| anyhow!("{member} has no --redis"))?;
            ensure!(
                redis == "redis://redis:6379",
                "{member} uses Redis at {redis}, not the redis service"
            );
        }
    }

    // Grafana: the provisioned data source is the prometheus service, with
    // the scrape interval as its time interval; the dashboard provider
    // reads the folder where dashboards/ is mounted.
    let provisioning = compose.host_path("grafana", "/etc/grafana/provisioning/datasources")?;
    let datasources = read_yaml(&provisioning.join("prometheus.yml"))?;
    let source = &datasources["datasources"][0];
    ensure!(
        source["type"] == "prometheus",
        "data source type: {:?}",
        source["type"]
    );
    let url = source["url"].as_str().unwrap_or_default();
    let prometheus_port = strings(&compose.service("prometheus")?["ports"])
        .iter()
        .find_map(|p| p.rsplit(':').next().map(str::to_owned))
        .unwrap_or_else(|| "9090".to_owned());
    ensure!(
        url == format!("http://prometheus:{prometheus_port}"),
        "Grafana's data source points at {url}"
    );
    ensure!(
        source["jsonData"]["timeInterval"] == config["global"]["scrape_interval"],
        "Grafana's timeInterval {:?} differs from the scrape interval {:?}",
        source["jsonData"]["timeInterval"],
        config["global"]["scrape_interval"]
    );
    let providers_dir = compose.host_path("grafana", "/etc/grafana/provisioning/dashboards")?;
    let providers = read_yaml(&providers_dir.join("astramq.yml"))?;
    let provider_path = providers["providers"][0]["options"]["path"]
        .as_str()
        .ok_or_else(|| anyhow!("the dashboard provider has no path"))?;
    let dashboards_on_host = compose.host_path("grafana", provider_path)?;
    ensure!(
        dashboards_on_host.canonicalize()? == dashboards::dashboards_dir().canonicalize()?,
        "Grafana loads dashboards from {}, not dashboards/",
        dashboards_on_host.display()
    );
    let home = compose.service("grafana")?["environment"]
        ["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !home.is_empty() {
        let home_on_host = compose.host_path("grafana", &home)?;
        ensure!(
            home_on_host.is_file(),
            "Grafana's home dashboard {home} does not exist"
        );
    }
    Ok(())
}

#[test]
fn compose_prometheus_config_is_rendered_from_the_template() -> Result<()> {
    let path = compose_dir().join("prometheus.yml");
    let checked_in = std::fs::read_to_string(&path)?;
    let config: Yaml = serde_yaml::from_str(&checked_in)?;
    let interval = config["global"]["scrape_interval"]
        .as_str()
        .ok_or_else(|| anyhow!("no global.scrape_interval"))?;
    let jobs = scrape_targets(&config);
    let targets = |job: &str| jobs.get(job).map(|t| t.join(",")).unwrap_or_default();
    let rendered = render_config_raw(
        interval,
        &targets("astramq-node"),
        &targets("astramq-proxy"),
    )?;
    ensure!(
        rendered == checked_in,
        "compose/prometheus.yml differs from the rendered template; regenerate it with\n  \
         scripts/render-prometheus-config {interval} {} {} > compose/prometheus.yml\n\
         rendered:\n{rendered}",
        targets("astramq-node"),
        targets("astramq-proxy")
    );
    Ok(())
}
