//! `dir:PATH`: one JSON file per peer, `peer_<peer id>.json`, in a directory.
//!
//! Files are written under a temporary name and renamed into place, so a reader never sees half
//! a record. Expired records are ignored and deleted by whoever lists them; a file that does not
//! parse (truncated, corrupted, foreign) or a record without a usable address is skipped with a
//! warning, once per version of the file. The registry is host-local: only processes that see
//! the same directory read it, so loopback addresses are published there.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use libp2p::PeerId;

use super::{DIR_INTERVAL, PeerRecord, Registry, Reject};
use crate::daemon::state::now_secs;

/// The file name prefix and suffix of a record.
const PREFIX: &str = "peer_";
const SUFFIX: &str = ".json";
/// Records larger than this are not records.
const MAX_FILE: u64 = 64 * 1024;

/// A directory of peer records.
pub struct DirRegistry(Arc<Inner>);

struct Inner {
    dir: PathBuf,
    /// Files already warned about (path and modification time), so a daemon that lists every
    /// 30 seconds says it once.
    warned: Mutex<HashSet<(PathBuf, Option<SystemTime>)>>,
}

impl DirRegistry {
    /// The registry in `dir` (created on the first publish).
    pub fn new(dir: PathBuf) -> DirRegistry {
        DirRegistry(Arc::new(Inner {
            dir,
            warned: Mutex::new(HashSet::new()),
        }))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0.dir
    }
}

impl Inner {
    /// The file of a peer's record; `None` for a string that is not a peer id (so that nothing
    /// but a peer id ever becomes part of a path).
    fn file_of(&self, peer_id: &str) -> Option<PathBuf> {
        peer_id.parse::<PeerId>().ok()?;
        Some(self.dir.join(format!("{PREFIX}{peer_id}{SUFFIX}")))
    }

    fn publish_sync(&self, record: &PeerRecord) -> anyhow::Result<()> {
        let path = self
            .file_of(&record.peer_id)
            .ok_or_else(|| anyhow::anyhow!("{:?} is not a peer id", record.peer_id))?;
        fs::create_dir_all(&self.dir)
            .map_err(|e| anyhow::anyhow!("cannot create {} ({e})", self.dir.display()))?;
        let mut bytes = serde_json::to_vec_pretty(record)?;
        bytes.push(b'\n');
        let write = || -> std::io::Result<()> {
            let mut tmp = tempfile::Builder::new()
                .prefix(".peer-")
                .suffix(".tmp")
                // Records hold no secret; other runner users of a shared dir may read them.
                .permissions(fs::Permissions::from_mode(0o644))
                .tempfile_in(&self.dir)?;
            tmp.write_all(&bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| anyhow::anyhow!("cannot write {} ({e})", path.display()))
    }

    fn list_sync(&self) -> anyhow::Result<Vec<PeerRecord>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => anyhow::bail!("cannot read {} ({e})", self.dir.display()),
        };
        let now = now_secs();
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(peer_id) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.strip_suffix(SUFFIX))
            else {
                continue;
            };
            let path = entry.path();
            match self.read_record(&path, peer_id, now) {
                Ok(Some(record)) => out.push(record),
                Ok(None) => {}
                Err(why) => self.warn_once(&path, &why),
            }
        }
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        Ok(out)
    }

    /// One file: `Ok(None)` when expired (and deleted), `Err` with the reason to warn about.
    fn read_record(
        &self,
        path: &Path,
        peer_id: &str,
        now: u64,
    ) -> Result<Option<PeerRecord>, String> {
        let bytes = read_bounded(path)?;
        let record: PeerRecord = serde_json::from_slice(&bytes)
            .map_err(|e| format!("not a peer record (corrupted or truncated? {e})"))?;
        if record.peer_id != peer_id {
            return Err(format!(
                "it holds the record of {:?}, not of the peer its name says",
                record.peer_id
            ));
        }
        match record.validate(now) {
            Ok((record, problems)) => {
                for problem in problems {
                    self.warn_once(path, &format!("skipping {problem}"));
                }
                Ok(Some(record))
            }
            Err(Reject::Expired) => {
                tracing::debug!("removing the expired peer record {}", path.display());
                if let Err(e) = fs::remove_file(path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::debug!("cannot remove {} ({e})", path.display());
                }
                Ok(None)
            }
            Err(Reject::Invalid(why)) => Err(why),
        }
    }

    fn warn_once(&self, path: &Path, why: &str) {
        let mtime = fs::symlink_metadata(path).and_then(|m| m.modified()).ok();
        let first = self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((path.to_path_buf(), mtime));
        if first {
            tracing::warn!("skipping peer record {}: {why}", path.display());
        }
    }

    fn remove_sync(&self, peer_id: &str) -> anyhow::Result<()> {
        let Some(path) = self.file_of(peer_id) else {
            anyhow::bail!("{peer_id:?} is not a peer id");
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => anyhow::bail!("cannot remove {} ({e})", path.display()),
        }
    }
}

/// The bytes of a record file, read safely from a directory that other local users may write.
///
/// The file is opened without following a symlink (`peer_x.json → /proc/self/pagemap` must not
/// make a reader walk its own address space) and without blocking (a FIFO would hang the
/// heartbeat); then the *open* file is checked, so it cannot be swapped between a check and the
/// read, and at most [`MAX_FILE`] + 1 bytes are read whatever its size claims (files under
/// `/proc` say 0).
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "a symlink, not a record file".to_string(),
            _ => format!("cannot read it ({e})"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it ({e})"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{} bytes is too large for a peer record",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it ({e})"))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!(
            "more than {MAX_FILE} bytes is too large for a peer record"
        ));
    }
    Ok(bytes)
}

/// Runs a blocking file operation off the runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl Registry for DirRegistry {
    fn name(&self) -> String {
        format!("dir:{}", self.0.dir.display())
    }

    fn is_host_local(&self) -> bool {
        true
    }

    fn default_interval(&self) -> Duration {
        DIR_INTERVAL
    }

    fn publish<'a>(&'a self, record: &'a PeerRecord) -> BoxFuture<'a, anyhow::Result<()>> {
        let this = self.0.clone();
        let record = record.clone();
        Box::pin(blocking(move || this.publish_sync(&record)))
    }

    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<PeerRecord>>> {
        let this = self.0.clone();
        Box::pin(blocking(move || this.list_sync()))
    }

    fn remove<'a>(&'a self, peer_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        let this = self.0.clone();
        let peer_id = peer_id.to_string();
        Box::pin(blocking(move || this.remove_sync(&peer_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(peer: &PeerId, expires_at: u64) -> PeerRecord {
        PeerRecord {
            version: 1,
            peer_id: peer.to_string(),
            multiaddrs: vec![format!("/ip4/127.0.0.1/tcp/9000/p2p/{peer}")],
            runner_name: Some("r".into()),
            repository: None,
            workflow: None,
            listen_port: Some(9000),
            last_seen: now_secs(),
            expires_at,
        }
    }

    #[tokio::test]
    async fn publish_list_expire_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let registry = DirRegistry::new(dir.path().join("peers"));
        assert!(registry.list().await.unwrap().is_empty(), "no dir yet");

        let (a, b) = (PeerId::random(), PeerId::random());
        registry
            .publish(&record(&a, now_secs() + 60))
            .await
            .unwrap();
        registry.publish(&record(&b, now_secs() - 1)).await.unwrap();
        let file_b = registry.0.file_of(&b.to_string()).unwrap();
        assert!(file_b.exists());
        let listed = registry.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].peer_id, a.to_string());
        assert!(!file_b.exists(), "the expired record was deleted");

        // Corrupted, foreign and misnamed files are skipped.
        fs::write(
            dir.path().join("peers/peer_garbage.json"),
            b"{\"peer_id\": tru",
        )
        .unwrap();
        fs::write(dir.path().join("peers/notes.txt"), b"hello").unwrap();
        let c = PeerId::random();
        fs::write(
            registry.0.file_of(&c.to_string()).unwrap(),
            serde_json::to_vec(&record(&a, now_secs() + 60)).unwrap(),
        )
        .unwrap();
        assert_eq!(registry.list().await.unwrap().len(), 1);

        registry.remove(&a.to_string()).await.unwrap();
        registry.remove(&a.to_string()).await.unwrap();
        assert!(registry.list().await.unwrap().is_empty());
        assert!(registry.remove("../../etc/passwd").await.is_err());
    }
}
