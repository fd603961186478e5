//! Configuration layering shared by the node and the proxy: command-line
//! flags and `ASTRAMQ_*` environment variables (clap) over an optional TOML
//! file named by `--config`, over each binary's documented defaults.
//!
//! Each binary declares its settings once, every field optional, as a type
//! that is both a clap `Parser` and serde `Deserialize` and says how to
//! layer two of them ([`Layered`]); [`load`] does the rest.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Settings that can be given on the command line and in a file.
pub trait Layered: clap::Parser + DeserializeOwned + Default {
    /// The `--config` file named on the command line or in the environment.
    fn config_file(&self) -> Option<&Path>;
    /// Every field not set in `self` taken from `lower`.
    fn or(self, lower: Self) -> Self;
}

/// Why configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings (unknown keys included).
    #[error("parsing config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: toml::de::Error,
    },
}

/// Exit code for a configuration that cannot be used; clap exits with the
/// same code on a bad flag.
pub const EXIT_INVALID_CONFIG: i32 = 2;

/// Prints why the configuration was refused (the whole error chain) on
/// stderr and exits with [`EXIT_INVALID_CONFIG`]. For `main`, before
/// logging starts.
pub fn exit_invalid(program: &str, error: &dyn std::fmt::Display) -> ! {
    eprintln!("{program}: invalid configuration: {error:#}");
    std::process::exit(EXIT_INVALID_CONFIG)
}

/// Flags and environment, then the file they name.
pub fn load<T: Layered>() -> Result<T, ConfigError> {
    let given = T::parse();
    let from_file = match given.config_file() {
        Some(path) => read_toml(path)?,
        None => T::default(),
    };
    Ok(given.or(from_file))
}

/// Reads settings from a TOML file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}
