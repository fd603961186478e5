//! The short chaos run of the suite: three nodes behind the proxy, Redis
//! with AOF, a QoS 1/2 workload with slow subscribers, and one fault of
//! each kind plus a second kill, in about 100 s (see
//! `astramq_tests::chaos` for what is checked and for the long run).
//!
//! The summary block is printed whether the run passes or not
//! (`--nocapture` shows it for a passing run).

use anyhow::Result;
use astramq_tests::chaos::{self, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kills_freezes_redis_restarts_and_partitions() -> Result<()> {
    let config = ChaosConfig::short();
    println!("chaos: {config:?}");
    let report = chaos::run(&config).await?;
    println!("{}", report.summary());
    report.assert_clean()
}
