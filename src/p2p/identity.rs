//! The node's persistent ed25519 identity, kept in `$PEERCACHE_HOME/identity.key` (0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use libp2p::identity::Keypair;

use crate::error::UserError;

/// The identity file's name inside the state dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Loads the identity of `home`, creating the state dir (0700) and a new identity when absent.
pub fn load_or_create(home: &Path) -> anyhow::Result<Keypair> {
    let path = home.join(IDENTITY_FILE);
    match fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            UserError::usage(format!(
                "the identity {} is corrupt ({e}); remove it to create a new one (the node gets a new peer id)",
                path.display()
            ))
            .into()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(home, &path),
        Err(e) => Err(UserError::usage(format!(
            "cannot read the identity {} ({e}); fix its permissions or set PEERCACHE_HOME to another state dir",
            path.display()
        ))
        .into()),
    }
}

/// Creates the state dir, and makes it 0700 even when it existed: it holds the identity and the
/// local API's capability.
pub fn ensure_state_dir(home: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .and_then(|()| fs::set_permissions(home, fs::Permissions::from_mode(0o700)))
        .map_err(|e| state_dir_unusable(home, e))
}

fn state_dir_unusable(home: &Path, e: std::io::Error) -> anyhow::Error {
    UserError::usage(format!(
        "state dir {} is not usable ({e}); set PEERCACHE_HOME or --home to a writable directory",
        home.display()
    ))
    .into()
}

fn create(home: &Path, path: &Path) -> anyhow::Result<Keypair> {
    let unusable = |e: std::io::Error| state_dir_unusable(home, e);
    ensure_state_dir(home)?;
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair.to_protobuf_encoding()?;
    // Written under a temporary name and linked into place, so two processes starting at once
    // agree on one identity: the loser reads the winner's.
    let mut tmp = tempfile::Builder::new()
        .prefix(".identity")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(home)
        .map_err(unusable)?;
    tmp.write_all(&bytes).map_err(unusable)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(keypair),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(home),
        Err(e) => Err(unusable(e.error)),
    }
}

/// Opens a file for writing with mode 0600 (for files that hold secrets or capabilities).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(parent)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    // `persist` keeps the temp file's mode; state it for files replaced by a rename anyway.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("state");
        let first = load_or_create(&home).unwrap();
        let second = load_or_create(&home).unwrap();
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home.join(IDENTITY_FILE)), 0o600);
        assert_eq!(mode(&home), 0o700);
    }

    #[test]
    fn corrupt_identity_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
