//! `<run dir>/backends.json`: which backend owns which slot of the pinned
//! maps, and which daemon run wrote them. Rewritten (atomically) by the
//! daemon when the set of backends changes; read by `balancer stats`, which
//! joins it with the maps by slot and checks each slot's `stat::BACKEND_ID`
//! so a slot reused since the file was written is never misnamed.

use std::{io, path::Path};

use serde::{Deserialize, Serialize};

use super::status_file::{self, StatusError};
use crate::forward::BackendEngine;

/// Name of the identity file inside the run directory.
pub const FILE_NAME: &str = "backends.json";

/// Who the slots belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The config's `instance`.
    pub instance: String,
    /// Process id of the daemon (also in `DAEMON_STATS`).
    pub pid: u32,
    /// The engine that forwards.
    pub engine: String,
    /// When the daemon started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The pool in order, then draining backends.
    pub backends: Vec<SlotOwner>,
}

/// One backend and its slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotOwner {
    /// Index into `BACKEND_STATS` and `BACKEND_BYTES`.
    pub slot: u32,
    /// The backend's id, equal to `stat::BACKEND_ID` of its slot.
    pub id: u64,
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// The pool scope, if any.
    pub scope: Option<String>,
    /// Its `engine` choice. Absent in files of older daemons.
    #[serde(default)]
    pub engine: BackendEngine,
}

/// Writes `identity` to `<dir>/backends.json`.
///
/// # Errors
/// [`StatusError::Write`] naming the file.
pub fn write(dir: &Path, identity: &Identity) -> Result<(), StatusError> {
    status_file::write_json(dir, FILE_NAME, identity)
}

/// Reads `<dir>/backends.json`; `None` when there is none.
///
/// # Errors
/// [`StatusError::Read`] or [`StatusError::Parse`].
pub fn read(dir: &Path) -> Result<Option<Identity>, StatusError> {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StatusError::Read { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| StatusError::Parse { path, source })
}

/// Removes the identity file (the run directory goes with the status file).
pub fn remove(dir: &Path) {
    let path = dir.join(FILE_NAME);
    if let Err(error) = std::fs::remove_file(&path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove the identity file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_file_reads_back_and_is_none_once_removed() {
        let dir = std::env::temp_dir().join(format!("balancer-identity-{}", std::process::id()));
        let identity = Identity {
            instance: "t".to_owned(),
            pid: 7,
            engine: "sockmap".to_owned(),
            started_unix_ms: 1,
            backends: vec![SlotOwner {
                slot: 3,
                id: 9,
                name: "a".to_owned(),
                address: "10.0.0.1:1080".to_owned(),
                scope: None,
                engine: BackendEngine::Auto,
            }],
        };
        write(&dir, &identity).expect("write");
        assert_eq!(read(&dir).expect("read"), Some(identity));
        remove(&dir);
        assert_eq!(read(&dir).expect("read"), None);
        let _ = std::fs::remove_dir(&dir);
    }
}
