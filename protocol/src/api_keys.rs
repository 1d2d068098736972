//! Client API keys: who may read and who may commit, when an agent runs with `--api-keys FILE`.
//!
//! The file holds one key per line, `<key> <scope> <name>`, with `#` comments and blank lines:
//!
//! ```text
//! # key                               scope  name
//! 9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e     write  teller-app
//! 0a1b2c3d4e5f60718293a4b5c6d7e8f9     read   reporting
//! ```
//!
//! A `read` key may call `/read/`; a `write` key `/read/` and `/commit/`. The key travels as
//! `Authorization: Bearer <key>`; the name is what the agent logs with each transaction, so the
//! key itself never reaches a log line.
//!
//! Pure: parsing and the lookup; the agent's middleware turns the answers into 401 and 403.

use std::collections::HashSet;
use std::fmt;

/// Shortest key accepted: 16 characters of the allowed alphabet hold well over 64 bits of
/// randomness when made as the docs say (`openssl rand -hex 16` gives 32).
pub const MIN_KEY_LEN: usize = 16;
/// Longest key and name accepted: a header line, not a document.
pub const MAX_KEY_LEN: usize = 256;
pub const MAX_NAME_LEN: usize = 64;
/// Most keys in one file: each request compares against every key (so that the time taken
/// does not tell which key came close), which stays cheap at this size.
pub const MAX_KEYS: usize = 1000;

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `/read/` only.
    Read,
    /// `/read/` and `/commit/`.
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }

    /// Whether a key of this scope may do what needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key of the file. `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    key: String,
    pub scope: Scope,
    pub name: String,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("name", &self.name).field("scope", &self.scope).field("key", &"***").finish()
    }
}

/// The keys an agent accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

/// What is wrong with a keys file, by line (1-based). The messages never hold a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeysError {
    #[error("line {line}: expected '<key> <scope> <name>', found {found} field(s)")]
    Fields { line: usize, found: usize },
    #[error("line {line}: the scope must be 'read' or 'write', not '{scope}'")]
    Scope { line: usize, scope: String },
    #[error(
        "line {line}: a key must be {MIN_KEY_LEN} to {MAX_KEY_LEN} characters of ASCII letters, digits, '-', '_' and '.' (make one with: openssl rand -hex 16)"
    )]
    Key { line: usize },
    #[error("line {line}: a name must be 1 to {MAX_NAME_LEN} characters of ASCII letters, digits, '-', '_' and '.'")]
    Name { line: usize },
    #[error("line {line}: this key is already on line {first}")]
    DuplicateKey { line: usize, first: usize },
    #[error("line {line}: the name '{name}' is already on line {first}: names tell keys apart in the logs")]
    DuplicateName { line: usize, first: usize, name: String },
    #[error("more than {MAX_KEYS} keys")]
    TooMany,
    #[error("no keys: the file has only comments and blank lines (leave --api-keys out to run without keys)")]
    Empty,
}

fn token_chars(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Whether `key` could be a key of a keys file (length and alphabet), for a client that reads
/// its own key from a file and wants to say what is wrong before sending it.
pub fn is_key_text(key: &str) -> bool {
    (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) && token_chars(key)
}

/// Compares in time that depends on the lengths only, not on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

impl ApiKeys {
    /// Parses a keys file's text.
    pub fn parse(text: &str) -> Result<ApiKeys, ApiKeysError> {
        let mut keys: Vec<ApiKey> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        let mut names: HashSet<&str> = HashSet::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [key, scope, name] = fields[..] else {
                return Err(ApiKeysError::Fields { line, found: fields.len() });
            };
            let scope = match scope {
                "read" => Scope::Read,
                "write" => Scope::Write,
                other => return Err(ApiKeysError::Scope { line, scope: other.chars().take(20).collect() }),
            };
            if !is_key_text(key) {
                return Err(ApiKeysError::Key { line });
            }
            if name.is_empty() || name.len() > MAX_NAME_LEN || !token_chars(name) {
                return Err(ApiKeysError::Name { line });
            }
            if let Some(i) = keys.iter().position(|k| k.key == key) {
                return Err(ApiKeysError::DuplicateKey { line, first: lines_of[i] });
            }
            if !names.insert(name) {
                let first = keys.iter().position(|k| k.name == name).map_or(0, |i| lines_of[i]);
                return Err(ApiKeysError::DuplicateName { line, first, name: name.to_string() });
            }
            if keys.len() == MAX_KEYS {
                return Err(ApiKeysError::TooMany);
            }
            keys.push(ApiKey { key: key.to_string(), scope, name: name.to_string() });
            lines_of.push(line);
        }
        if keys.is_empty() {
            return Err(ApiKeysError::Empty);
        }
        Ok(ApiKeys { keys })
    }

    /// The key an `Authorization` header value carries (`Bearer <key>`), if it is one of these.
    /// Every key is compared, whichever matches.
    pub fn find(&self, header: Option<&str>) -> Option<&ApiKey> {
        let given = header?.strip_prefix("Bearer ")?.trim().as_bytes();
        let mut found = None;
        for key in &self.keys {
            if same(given, key.key.as_bytes()) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }

    /// How many keys of each scope, for the start-up line.
    pub fn counts(&self) -> (usize, usize) {
        let write = self.keys.iter().filter(|k| k.scope == Scope::Write).count();
        (self.keys.len() - write, write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# key                               scope  name
9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e     write  teller-app
0a1b2c3d4e5f60718293a4b5c6d7e8f9     read   reporting   # the nightly report

";

    #[test]
    fn a_key_is_found_by_its_bearer_header_and_knows_its_scope() {
        let keys = ApiKeys::parse(FILE).unwrap();
        assert_eq!(keys.counts(), (1, 1));
        let teller = keys.find(Some("Bearer 9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e")).unwrap();
        assert_eq!((teller.name.as_str(), teller.scope), ("teller-app", Scope::Write));
        let report = keys.find(Some("Bearer 0a1b2c3d4e5f60718293a4b5c6d7e8f9")).unwrap();
        assert_eq!((report.name.as_str(), report.scope), ("reporting", Scope::Read));
        for header in [
            None,
            Some(""),
            Some("Bearer "),
            Some("9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e"),
            Some("Bearer 9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5"),
            Some("Bearer 9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5ee"),
            Some("Basic 9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e"),
        ] {
            assert!(keys.find(header).is_none(), "{header:?}");
        }
    }

    #[test]
    fn a_write_key_may_read_a_read_key_may_not_write() {
        assert!(Scope::Write.allows(Scope::Read) && Scope::Write.allows(Scope::Write));
        assert!(Scope::Read.allows(Scope::Read) && !Scope::Read.allows(Scope::Write));
    }

    #[test]
    fn each_mistake_in_the_file_names_its_line_and_never_the_key() {
        let key = "9b1d2c3e4f5a6b7c8d9e0f1a2b3c4d5e";
        let cases = [
            (format!("{key} write"), ApiKeysError::Fields { line: 1, found: 2 }),
            (format!("# c\n{key} admin ops"), ApiKeysError::Scope { line: 2, scope: "admin".into() }),
            ("short write ops".to_string(), ApiKeysError::Key { line: 1 }),
            (format!("{key}! write ops"), ApiKeysError::Key { line: 1 }),
            (format!("{key} write o/ps"), ApiKeysError::Name { line: 1 }),
            (format!("{key} write a\n{key} read b"), ApiKeysError::DuplicateKey { line: 2, first: 1 }),
            (
                format!("{key} write a\n\n0a1b2c3d4e5f60718293a4b5c6d7e8f9 read a"),
                ApiKeysError::DuplicateName { line: 3, first: 1, name: "a".into() },
            ),
            ("# nothing\n\n".to_string(), ApiKeysError::Empty),
        ];
        for (text, expected) in cases {
            let err = ApiKeys::parse(&text).unwrap_err();
            assert_eq!(err, expected, "{text}");
            assert!(!err.to_string().contains(key), "{err}");
        }
        let many: String = (0..=MAX_KEYS).map(|i| format!("key-{i:016} read n{i}\n")).collect();
        assert_eq!(ApiKeys::parse(&many), Err(ApiKeysError::TooMany));
    }

    #[test]
    fn debug_output_hides_the_keys() {
        let keys = ApiKeys::parse(FILE).unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("teller-app") && !shown.contains("9b1d2c3e"), "{shown}");
    }
}
