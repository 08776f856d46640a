//! The admin token: given (`--admin-token`), or generated once and kept in the data directory so
//! that a restart does not change it (a token that changes at every start breaks every script
//! and bookmark that uses the admin API).
//!
//! The file is created with mode 0600 (the token is a password) and never rewritten; an explicit
//! token wins over it and leaves it untouched.

use crate::config::generate_admin_token;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The token file inside the data directory.
pub const TOKEN_FILE: &str = "admin-token";

/// Where the token in use came from (logged at start, never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--admin-token` / `FLASHSALE_ADMIN_TOKEN`.
    Given,
    /// Generated now and written to this file.
    Generated(PathBuf),
    /// Read from this file, written by an earlier start.
    Loaded(PathBuf),
    /// Generated now for this process only (the scale-out store has no data directory).
    GeneratedForThisRun,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given => f.write_str("given (redacted)"),
            Self::Generated(path) => write!(f, "generated, stored in {}", path.display()),
            Self::Loaded(path) => write!(f, "loaded from {}", path.display()),
            Self::GeneratedForThisRun => f.write_str("generated for this run only"),
        }
    }
}

/// The token file could not be read or written.
#[derive(Debug, Error)]
#[error("admin token file {}: {source}", path.display())]
pub struct TokenFileError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

/// The token in the data directory `dir`: read it if an earlier start wrote one, else generate
/// one and write it (mode 0600, created exclusively so two writers cannot both win).
pub fn load_or_create(dir: &Path) -> Result<(String, TokenSource), TokenFileError> {
    let path = dir.join(TOKEN_FILE);
    let fail = |source| TokenFileError {
        path: path.clone(),
        source,
    };
    match read(&path) {
        Ok(token) => return Ok((token, TokenSource::Loaded(path))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let token = generate_admin_token();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(fail)?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    Ok((token, TokenSource::Generated(path)))
}

fn read(path: &Path) -> io::Result<String> {
    let token = std::fs::read_to_string(path)?.trim().to_owned();
    if token.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file is empty (delete it to generate a new token)",
        ));
    }
    Ok(token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_generates_and_later_starts_load_the_same_token() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(source, TokenSource::Generated(path.clone()));
        assert_eq!(first.len(), 32);
        let (again, source) = load_or_create(dir.path()).unwrap();
        assert_eq!(again, first);
        assert_eq!(source, TokenSource::Loaded(path.clone()));
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), first);
    }

    #[cfg(unix)]
    #[test]
    fn the_token_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_empty_token_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "\n").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains(TOKEN_FILE) && e.contains("empty"), "{e}");
    }
}
