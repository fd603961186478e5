//! The password file: one `name:PHC-hash` per line, blank lines and `#`
//! comments allowed.
//!
//! [`UserTable::parse`] reads it for the node (a malformed line refuses the
//! whole file, naming the line); [`PasswordFile`] edits it for the `user`
//! command, keeping every other line (comments too) as it was and
//! replacing the file atomically (a temporary file in the same directory,
//! then `rename`), so a node reloading on SIGHUP never reads half a file.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::PasswordHash;

/// A line of the password file that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {problem}")]
pub struct MalformedLine {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it (never the hash itself).
    pub problem: &'static str,
}

/// User name → PHC hash string, as read from a password file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserTable {
    hashes: HashMap<String, String>,
}

impl UserTable {
    /// Parses a password file's text; the first malformed line is an error.
    pub fn parse(text: &str) -> Result<UserTable, MalformedLine> {
        let mut hashes = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let Some((name, hash)) = entry(raw).map_err(|problem| MalformedLine {
                line: index + 1,
                problem,
            })?
            else {
                continue;
            };
            if hashes.insert(name.to_owned(), hash.to_owned()).is_some() {
                return Err(MalformedLine {
                    line: index + 1,
                    problem: "the user name appears twice",
                });
            }
        }
        Ok(UserTable { hashes })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<UserTable, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        UserTable::parse(&text).map_err(|malformed| PasswordFileError::Malformed {
            path: path.to_owned(),
            malformed,
        })
    }

    /// The PHC hash of `name`, if the file has that user.
    pub fn hash(&self, name: &str) -> Option<&str> {
        self.hashes.get(name).map(String::as_str)
    }

    /// How many users the file has.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The user names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.hashes.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// It could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{}: {malformed}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Which line, and why.
        malformed: MalformedLine,
    },
    /// It could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// One line: `None` for a blank line or a comment, else the name and hash.
fn entry(raw: &str) -> Result<Option<(&str, &str)>, &'static str> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let Some((name, hash)) = line.split_once(':') else {
        return Err("expected `name:hash`");
    };
    check_name(name)?;
    let parsed = PasswordHash::new(hash).map_err(|_| "the hash is not a PHC string")?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err("the hash is not argon2id");
    }
    Ok(Some((name, hash)))
}

/// Refuses a user name the file format cannot hold.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty user name");
    }
    if name.contains(':') || name.chars().any(char::is_control) {
        return Err("the user name contains `:` or a control character");
    }
    if name.starts_with('#') || name.trim() != name {
        return Err("the user name starts with `#` or has surrounding spaces");
    }
    if name.len() > 65_535 {
        return Err("the user name is longer than MQTT allows");
    }
    Ok(())
}

/// A password file being edited by the `user` command.
pub struct PasswordFile {
    /// Where it lives.
    path: PathBuf,
    /// Its lines as read (an absent file has none).
    lines: Vec<String>,
}

impl PasswordFile {
    /// Reads `path` (a missing file is an empty one); refuses a malformed
    /// file rather than rewriting it.
    pub fn open(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(PasswordFileError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        UserTable::parse(&text).map_err(|malformed| PasswordFileError::Malformed {
            path: path.to_owned(),
            malformed,
        })?;
        Ok(PasswordFile {
            path: path.to_owned(),
            lines: text.lines().map(str::to_owned).collect(),
        })
    }

    /// The users in it.
    pub fn table(&self) -> UserTable {
        UserTable::parse(&self.lines.join("\n")).unwrap_or_default()
    }

    /// Sets `name`'s hash: replaces its line, or appends one.
    pub fn set(&mut self, name: &str, hash: &str) {
        let new = format!("{name}:{hash}");
        match self.position(name) {
            Some(at) => self.lines[at] = new,
            None => self.lines.push(new),
        }
    }

    /// Removes `name`'s line; false if it had none.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.position(name) {
            Some(at) => {
                self.lines.remove(at);
                true
            }
            None => false,
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|line| matches!(entry(line), Ok(Some((n, _))) if n == name))
    }

    /// Writes the file atomically: a temporary file beside it (mode 0600),
    /// synced, then renamed over it.
    pub fn save(&self) -> Result<(), PasswordFileError> {
        let failed = |source| PasswordFileError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut text = self.lines.join("\n");
        text.push('\n');
        let written = (|| {
            let mut file = private_file(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(failed(error));
        }
        Ok(())
    }
}

/// Creates `path` readable by its owner only.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0G4bT8eO1hXl1cJ5b2d6mXlL4aR6kT3Yy3s0bq3o2wQ";

    #[test]
    fn users_comments_and_blank_lines() {
        let text = format!("# users\n\nalice:{HASH}\n  bob:{HASH}  \n");
        let table = UserTable::parse(&text).unwrap();
        assert_eq!(table.names(), ["alice", "bob"]);
        assert_eq!(table.hash("alice"), Some(HASH));
        assert_eq!(table.hash("carol"), None);
    }

    #[test]
    fn malformed_lines_are_named() {
        let cases = [
            ("alice\n", 1, "expected `name:hash`"),
            (":$argon2id$v=19$x\n", 1, "empty user name"),
            (
                "\n# ok\nalice:plaintext\n",
                3,
                "the hash is not a PHC string",
            ),
            (
                "alice:$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo\n",
                1,
                "the hash is not argon2id",
            ),
        ];
        for (text, line, problem) in cases {
            assert_eq!(
                UserTable::parse(text),
                Err(MalformedLine { line, problem }),
                "{text:?}"
            );
        }
        let twice = format!("alice:{HASH}\nalice:{HASH}\n");
        assert_eq!(UserTable::parse(&twice).unwrap_err().line, 2);
    }

    #[test]
    fn edits_keep_other_lines_and_replace_atomically() {
        let dir = std::env::temp_dir().join(format!("astramq-pwfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwords");
        std::fs::write(&path, format!("# keep me\nalice:{HASH}\n\nbob:{HASH}\n")).unwrap();
        let mut file = PasswordFile::open(&path).unwrap();
        file.set("carol", HASH);
        assert!(file.remove("alice"));
        assert!(!file.remove("nobody"));
        file.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("# keep me\n\nbob:{HASH}\ncarol:{HASH}\n"));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // A missing file is an empty one.
        let fresh = PasswordFile::open(&dir.join("absent")).unwrap();
        assert!(fresh.table().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_the_format_cannot_hold_are_refused() {
        for name in ["", "a:b", "#a", " a", "a\nb"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
        assert!(check_name("alice@example").is_ok());
    }
}
