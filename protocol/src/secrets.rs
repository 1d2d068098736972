//! Secrets the programs read from files (PostgreSQL passwords), and the one rule for showing
//! text that may hold one: a password inside a connection URL is replaced by `***` before the
//! URL reaches a log line, an error or `/status`.
//!
//! Pure apart from reading the file: no logging here; the caller says what it found.

use std::path::Path;

/// What replaces a secret wherever text that held one is shown.
pub const REDACTED: &str = "***";

/// Longest secret file read: a password is a line, never a file to stream.
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the {what} file {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
    #[error("the {what} file {path} is empty")]
    Empty { what: &'static str, path: String },
    #[error("the {what} file {path} is longer than {MAX_SECRET_FILE_BYTES} bytes: it should hold one line")]
    TooLong { what: &'static str, path: String },
    #[error("the {what} file {path} is not UTF-8 text")]
    NotText { what: &'static str, path: String },
}

/// A secret read from a file: its first line without the line ending (so `echo pw > file`
/// works), and whether other users may read the file (the caller warns: `chmod 600`).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub secret: String,
    pub readable_by_others: bool,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("secret", &REDACTED)
            .field("readable_by_others", &self.readable_by_others)
            .finish()
    }
}

/// Reads the secret in `path`; `what` names it in errors ("PostgreSQL password").
pub fn load_secret_file(path: &Path, what: &'static str) -> Result<SecretFile, SecretError> {
    let shown = || path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SecretError::Read { what, path: shown(), source })?;
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::TooLong { what, path: shown() });
    }
    let bytes = std::fs::read(path).map_err(|source| SecretError::Read { what, path: shown(), source })?;
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText { what, path: shown() })?;
    let secret = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if secret.is_empty() {
        return Err(SecretError::Empty { what, path: shown() });
    }
    Ok(SecretFile { secret: secret.to_string(), readable_by_others: mode_lets_others_read(&meta) })
}

#[cfg(unix)]
fn mode_lets_others_read(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o077 != 0
}

#[cfg(not(unix))]
fn mode_lets_others_read(_: &std::fs::Metadata) -> bool {
    false
}

/// `url` with the password of its user part (`scheme://user:password@host`) and any
/// `password=` query parameter replaced by [`REDACTED`]; text that holds neither comes back
/// unchanged.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let rest = &out[authority_start..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        // The user part ends at the authority's last '@' (a password may itself hold '@').
        if let Some(at) = rest[..authority_len].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                out.replace_range(authority_start + colon + 1..authority_start + at, REDACTED);
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={REDACTED}"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_never_shows_its_password() {
        let cases = [
            ("postgres://postgres@127.0.0.1:5432/postgres", "postgres://postgres@127.0.0.1:5432/postgres"),
            ("postgres://postgres:s3cret@127.0.0.1/postgres", "postgres://postgres:***@127.0.0.1/postgres"),
            ("postgres://u:p@ss:w@rd@h:1/db?x=1", "postgres://u:***@h:1/db?x=1"),
            ("postgres://u@h/db?password=s3cret&sslmode=disable", "postgres://u@h/db?password=***&sslmode=disable"),
            ("postgres://u:a@h?PASSWORD=b", "postgres://u:***@h?PASSWORD=***"),
            ("not a url", "not a url"),
            ("", ""),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_secret_file_gives_its_first_line_and_says_when_others_may_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rmw-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "pa ss:w@rd\r\nsecond line\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let read = load_secret_file(&path, "PostgreSQL password").unwrap();
        assert_eq!(read.secret, "pa ss:w@rd");
        assert!(!read.readable_by_others);
        assert!(!format!("{read:?}").contains("w@rd"), "Debug shows no secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_secret_file(&path, "PostgreSQL password").unwrap().readable_by_others);

        std::fs::write(&path, "\n").unwrap();
        let err = load_secret_file(&path, "PostgreSQL password").unwrap_err().to_string();
        assert!(err.contains("PostgreSQL password file") && err.contains("empty"), "{err}");
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        assert!(matches!(load_secret_file(&path, "x"), Err(SecretError::TooLong { .. })));
        let err = load_secret_file(&dir.join("absent"), "PostgreSQL password").unwrap_err().to_string();
        assert!(err.contains("absent"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
