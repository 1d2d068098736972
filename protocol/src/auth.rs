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
    #[error("the cluster token file {0} is empty")]
    Empty(String),
    #[error("the cluster token in {0} has characters other than ASCII letters, digits, '-', '_' and '.'")]
    Invalid(String),
}

/// Reads a token file (surrounding whitespace ignored). Tokens are header-safe ASCII.
pub fn load_token(path: &Path) -> Result<String, TokenError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: shown.clone(), source })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(TokenError::Empty(shown));
    }
    if !token.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(TokenError::Invalid(shown));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

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
