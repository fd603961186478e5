//! `astramq-node user add|remove|list`: managing users in a password file
//! or in the cluster's Redis.
//!
//! `add` reads the password from standard input: on a terminal it prompts
//! twice without echo; otherwise it reads one line (so `echo pw | ...`
//! works in scripts). The password file is rewritten atomically and keeps
//! its other lines; a running node picks the change up on SIGHUP. A user
//! added to Redis can log in on every node at once.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use super::hash::hash_password;
use super::password_file::{check_name, PasswordFile};
use crate::redis_model::endpoint::{permanent_failure, RedisEndpoint, RedisTlsFiles};
use crate::redis_model::keys;

/// Bound on connecting to Redis and on each command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The `user` command line.
#[derive(Debug, Parser)]
#[command(
    name = "user",
    bin_name = "astramq-node user",
    about = "Manage the users who may log in (argon2id password hashes)."
)]
pub struct UserCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Add a user, or change their password; the password is read from standard input.
    Add {
        /// The user name clients log in with.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// List the user names.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// Where the users are kept: exactly one of the two (checked by
/// [`Target::place`]; a clap group would also take in the TLS flags).
#[derive(Debug, Args)]
struct Target {
    /// The password file (`name:PHC-hash` lines); created if missing.
    #[arg(long, value_name = "FILE", conflicts_with = "redis")]
    password_file: Option<PathBuf>,
    /// The cluster's Redis URL (users shared by every node): `redis://[user]:password@host:port`, or `rediss://...` for TLS.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// With `--redis rediss://...`: PEM CA certificates the server's certificate must chain to [default: the system's roots].
    #[arg(long, value_name = "FILE", requires = "redis")]
    redis_ca: Option<PathBuf>,
    /// With `--redis rediss://...`: PEM client certificate chain to present; needs `--redis-key`.
    #[arg(long, value_name = "FILE", requires = "redis")]
    redis_cert: Option<PathBuf>,
    /// The private key of `--redis-cert`.
    #[arg(long, value_name = "FILE", requires = "redis")]
    redis_key: Option<PathBuf>,
}

/// Runs `astramq-node user ...` (`args` without the program name and
/// `user`); returns the process exit code.
pub fn main(args: impl Iterator<Item = String>) -> i32 {
    let command = match UserCommand::try_parse_from(std::iter::once("user".to_owned()).chain(args))
    {
        Ok(command) => command,
        Err(error) => {
            let _ = error.print();
            return error.exit_code();
        }
    };
    match run(command) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("astramq-node user: {error:#}");
            1
        }
    }
}

fn run(command: UserCommand) -> anyhow::Result<()> {
    match command.action {
        Action::Add { name, target } => {
            check_name(&name).map_err(|problem| anyhow::anyhow!("user name refused: {problem}"))?;
            let password = read_password(&name)?;
            let hash = hash_password(password.as_bytes())?;
            match target.place()? {
                Place::File(path) => {
                    let mut file = PasswordFile::open(&path)?;
                    file.set(&name, &hash);
                    file.save()?;
                    println!(
                        "user {name} set in {} (send SIGHUP to running nodes)",
                        path.display()
                    );
                }
                Place::Redis(endpoint) => {
                    let mut con = redis_connection(&endpoint)?;
                    redis_query::<()>(
                        &mut con,
                        redis::cmd("HSET").arg(keys::users()).arg(&name).arg(&hash),
                    )?;
                    println!("user {name} set in Redis");
                }
            }
        }
        Action::Remove { name, target } => match target.place()? {
            Place::File(path) => {
                let mut file = PasswordFile::open(&path)?;
                if !file.remove(&name) {
                    bail!("no user {name} in {}", path.display());
                }
                file.save()?;
                println!("user {name} removed from {}", path.display());
            }
            Place::Redis(endpoint) => {
                let mut con = redis_connection(&endpoint)?;
                let removed: u64 =
                    redis_query(&mut con, redis::cmd("HDEL").arg(keys::users()).arg(&name))?;
                if removed == 0 {
                    bail!("no user {name} in Redis");
                }
                println!("user {name} removed from Redis");
            }
        },
        Action::List { target } => {
            let mut names: Vec<String> = match target.place()? {
                Place::File(path) => existing(&path)?
                    .table()
                    .names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                Place::Redis(endpoint) => {
                    let mut con = redis_connection(&endpoint)?;
                    redis_query(&mut con, redis::cmd("HKEYS").arg(keys::users()))?
                }
            };
            names.sort();
            for name in names {
                println!("{name}");
            }
        }
    }
    Ok(())
}

/// A target resolved.
enum Place {
    File(PathBuf),
    Redis(RedisEndpoint),
}

impl Target {
    fn place(self) -> anyhow::Result<Place> {
        match (self.password_file, self.redis) {
            (Some(path), None) => Ok(Place::File(path)),
            (None, Some(url)) => {
                let files = RedisTlsFiles {
                    ca: self.redis_ca,
                    cert: self.redis_cert,
                    key: self.redis_key,
                };
                Ok(Place::Redis(RedisEndpoint::open(&url, &files)?))
            }
            _ => bail!("give one of --password-file FILE or --redis URL"),
        }
    }
}

/// Opens a password file that must exist (for `list`).
fn existing(path: &Path) -> anyhow::Result<PasswordFile> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    Ok(PasswordFile::open(path)?)
}

/// The new password: prompted twice without echo on a terminal, else one
/// line of standard input.
fn read_password(name: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {name}: "))
            .context("reading the password")?;
        let again =
            rpassword::prompt_password("Same password again: ").context("reading the password")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(&line)
            .to_owned()
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

/// A connection to `endpoint` with bounded waits.
fn redis_connection(endpoint: &RedisEndpoint) -> anyhow::Result<redis::Connection> {
    let url = endpoint.redacted();
    let con = match endpoint.client().get_connection_with_timeout(REDIS_TIMEOUT) {
        Ok(con) => con,
        Err(error) => match permanent_failure(&error) {
            Some(problem) => bail!("connecting to Redis at {url}: {problem}"),
            None => {
                return Err(error).with_context(|| format!("connecting to Redis at {url}"));
            }
        },
    };
    con.set_read_timeout(Some(REDIS_TIMEOUT))?;
    con.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(con)
}

/// Runs one command.
fn redis_query<T: redis::FromRedisValue>(
    con: &mut redis::Connection,
    cmd: &mut redis::Cmd,
) -> anyhow::Result<T> {
    cmd.query(con)
        .map_err(|error| match permanent_failure(&error) {
            Some(problem) => anyhow::anyhow!("{problem}"),
            None => anyhow::Error::new(error).context("Redis command failed"),
        })
}
