//! A node's PostgreSQL data folder wiped, as when a disk is lost.
//!
//! The wipe keeps the folder's server log (the harness keeps it inside the data folder) beside
//! the folder and removes the folder. The heal makes it again with the harness's
//! [`e2e::Cluster::recreate_data_dir`], exactly as the harness made it for a fresh node (a copy
//! of its `initdb` template with the node's port and socket folder), so that the node comes
//! back as a brand-new empty server with the same port and configuration.

use std::fs;
use std::path::Path;

/// Removes `data_dir` (PostgreSQL must be stopped); its server log goes to `keep_log` first.
pub fn wipe(data_dir: &Path, keep_log: &Path) -> Result<(), String> {
    let log = data_dir.join("server.log");
    if log.exists() {
        fs::rename(&log, keep_log).map_err(|e| format!("move {} aside: {e}", log.display()))?;
    }
    fs::remove_dir_all(data_dir).map_err(|e| format!("remove {}: {e}", data_dir.display()))
}
