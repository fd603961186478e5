//! Configuration tests: defaults, layering, and what is refused.

use super::*;

fn flags(args: &[&str]) -> Settings {
    Settings::try_parse_from(std::iter::once("astramq-proxy").chain(args.iter().copied())).unwrap()
}

#[test]
fn defaults_match_the_documentation() {
    let c = ProxyConfig::resolve(flags(&["--backends", "127.0.0.1:1883"])).unwrap();
    assert_eq!(c.listen, "0.0.0.0:1883".parse().unwrap());
    assert_eq!(c.balance, Strategy::RoundRobin);
    assert_eq!(c.connection.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.connection.dial_timeout, Duration::from_millis(1000));
    assert_eq!(c.connection.max_connect_size, 65_536);
    assert!(!c.connection.proxy_protocol);
    assert!(c.gossip.is_none());
    assert!(c.threads >= 1);
    assert_eq!(
        c.admission,
        AdmissionLimits {
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            max_connection_rate: 5000,
        }
    );
}

#[test]
fn admission_limits_come_from_flags_environment_names_and_the_file() {
    let file: Settings = toml::from_str(
        "backends = [\"127.0.0.1:1\"]\nmax-connections = 50\n\
         max-connections-per-ip = 5\nmax-connection-rate = 7\n",
    )
    .unwrap();
    let c = ProxyConfig::resolve(flags(&["--max-connections-per-ip", "6"]).or(file)).unwrap();
    assert_eq!(c.admission.max_connections, 50);
    assert_eq!(c.admission.max_connections_per_ip, 6);
    assert_eq!(c.admission.max_connection_rate, 7);
}

/// Each refused value, with the setting the message must name.
#[test]
fn zero_limits_and_out_of_range_timeouts_are_refused_by_name() {
    for (flag, value) in [
        ("--max-connections", "0"),
        ("--max-connections-per-ip", "0"),
        ("--max-connection-rate", "0"),
        ("--connect-timeout", "0"),
        ("--connect-timeout", "3601"),
        ("--dial-timeout-ms", "0"),
        ("--max-connect-size", "15"),
        ("--threads", "0"),
    ] {
        let error = ProxyConfig::resolve(flags(&["--backends", "127.0.0.1:1", flag, value]))
            .expect_err(flag)
            .to_string();
        assert!(
            error.starts_with(&format!("{}: {value} ", &flag[2..])),
            "{flag} {value}: {error}"
        );
    }
    let c = ProxyConfig::resolve(flags(&[
        "--backends",
        "127.0.0.1:1",
        "--connect-timeout",
        "3600",
    ]))
    .unwrap();
    assert_eq!(c.connection.connect_timeout, Duration::from_secs(3600));
}

#[test]
fn flags_override_the_file() {
    let file: Settings = toml::from_str(
        "backends = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nbalance = \"client-id\"\n\
         proxy-protocol = true\ndial-timeout-ms = 50\n",
    )
    .unwrap();
    let given = flags(&["--balance", "least-connections", "--proxy-protocol=false"]);
    let c = ProxyConfig::resolve(given.or(file)).unwrap();
    assert_eq!(c.backends.len(), 2);
    assert_eq!(c.balance, Strategy::LeastConnections);
    assert!(!c.connection.proxy_protocol);
    assert_eq!(c.connection.dial_timeout, Duration::from_millis(50));
}

#[test]
fn a_bare_proxy_protocol_flag_turns_it_on() {
    let c = ProxyConfig::resolve(flags(&[
        "--backends",
        "127.0.0.1:1,127.0.0.1:2",
        "--proxy-protocol",
    ]))
    .unwrap();
    assert!(c.connection.proxy_protocol);
    assert_eq!(c.backends.len(), 2);
}

#[test]
fn gossip_is_on_with_a_gossip_address() {
    let c = ProxyConfig::resolve(flags(&[
        "--gossip-listen",
        "127.0.0.1:7946",
        "--join",
        "127.0.0.1:7947,127.0.0.1:7948",
    ]))
    .unwrap();
    assert_eq!(c.gossip.unwrap().join.len(), 2);
}

#[test]
fn nonsense_is_refused() {
    assert!(
        ProxyConfig::resolve(Settings::default()).is_err(),
        "no backends at all"
    );
    assert!(ProxyConfig::resolve(flags(&[
        "--backends",
        "127.0.0.1:1",
        "--join",
        "127.0.0.1:2"
    ]))
    .is_err());
    assert!(ProxyConfig::resolve(flags(&[
        "--backends",
        "127.0.0.1:1",
        "--max-connect-size",
        "3"
    ]))
    .is_err());
    assert!(toml::from_str::<Settings>("lisen = \"x\"").is_err());
    assert!(Settings::try_parse_from(["astramq-proxy", "--balance", "random"]).is_err());
}
