//! Long chaos run for humans (see `astramq_tests::chaos` for what it
//! checks):
//!
//! ```text
//! cargo run -p astramq-tests --bin chaos -- --duration 600 --kills 20
//! ```
//!
//! Flags: `--duration SECS` (fault phase), `--kills N` (the other fault
//! kinds scale with it), `--seed N` (repeat a schedule), `--drain SECS`.
//! Prints the summary block; exits non-zero if a guarantee was broken.

use std::process::ExitCode;

use astramq_tests::chaos::{self, ChaosConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let config = match ChaosConfig::from_args(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("chaos: {config:?}");
    match chaos::run(&config).await {
        Ok(report) => {
            println!("{}", report.summary());
            if report.violations().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos: the run itself failed: {e:#}");
            ExitCode::from(3)
        }
    }
}
