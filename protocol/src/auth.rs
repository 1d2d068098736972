//! The optional cluster token that guards internal endpoints (agent to agent, supervisor to
//! agent, drills, log paging). Pure: each program wraps [`authorized`] in its HTTP middleware.

use std::path::Path;

/// The header value every internal call carries when a token is configured.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Whether an `Authorization` header value carries `token`. The comparison takes the same
/// time wherever the first difference is, so the token cannot be guessed byte by byte.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    let given = header.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the cluster token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the cluster token from {0} is empty")]
    Empty(String),
    #[error("the cluster token from {0} has characters other than ASCII letters, digits, '-', '_' and '.'")]
    Invalid(String),
}

/// Reads a token file (surrounding whitespace ignored). Tokens are header-safe ASCII.
pub fn load_token(path: &Path) -> Result<String, TokenError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: shown.clone(), source })?;
    checked(text.trim(), shown)
}

/// The cluster token a program runs with: from `file` (`--cluster-token-file`) if given, else
/// `value` (the `CLUSTER_TOKEN` variable), else none. Both sources are held to the same rules,
/// so a token that could not travel in a header is refused at start-up, not dropped silently.
pub fn resolve_token(file: Option<&Path>, value: Option<&str>) -> Result<Option<String>, TokenError> {
    match (file, value.map(str::trim)) {
        (Some(path), _) => load_token(path).map(Some),
        (None, Some(token)) if !token.is_empty() => checked(token, "CLUSTER_TOKEN".into()).map(Some),
        _ => Ok(None),
    }
}

fn checked(token: &str, source: String) -> Result<String, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty(source));
    }
    if !token.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(TokenError::Invalid(source));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_wins_and_both_sources_are_checked() {
        assert_eq!(resolve_token(None, None).unwrap(), None);
        assert_eq!(resolve_token(None, Some("  ")).unwrap(), None);
        assert_eq!(resolve_token(None, Some(" abc-1.2_x ")).unwrap().as_deref(), Some("abc-1.2_x"));
        let err = resolve_token(None, Some("has space")).unwrap_err().to_string();
        assert!(err.contains("CLUSTER_TOKEN"), "{err}");
        let path = std::env::temp_dir().join(format!("rmw-token-test-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let token = resolve_token(Some(&path), Some("from-env"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(token.unwrap().as_deref(), Some("from-file"));
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some("Bearer s3crett"), "s3cret"));
        assert!(!authorized(Some("s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
        assert!(!authorized(Some("Bearer "), "s3cret"));
    }
}
