//! Standalone authentication: one random token per node agent and per waypoint, kept as files
//! in the controller's data directory (mode 0600, directory 0700).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use sha2::{Digest, Sha256};

use super::{AuthError, Authenticator, Caller};

/// Tokens kept as files in a directory. Lookups are by the token's SHA-256, so the map holds no
/// secret and comparing does not leak a prefix through timing.
pub struct TokenFiles {
    dir: PathBuf,
    known: RwLock<HashMap<[u8; 32], Caller>>,
}

impl TokenFiles {
    /// Opens (creating, mode 0700) the token directory. Only tokens made known by
    /// [`TokenFiles::ensure`] authenticate: a stray file in the directory proves nothing.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o700)?;
        let files = TokenFiles {
            dir,
            known: RwLock::default(),
        };
        Ok(files)
    }

    pub fn path(&self, caller: &Caller) -> PathBuf {
        self.dir.join(match caller {
            Caller::NodeAgent { node } => format!("node-{node}.token"),
            Caller::Waypoint { namespace, name } => format!("waypoint-{namespace}.{name}.token"),
        })
    }

    /// Makes sure every caller has a token file, creating the missing ones.
    pub fn ensure<'a>(&self, callers: impl IntoIterator<Item = &'a Caller>) -> std::io::Result<()> {
        for caller in callers {
            let path = self.path(caller);
            let token = match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    let bytes: [u8; 32] = rand::random();
                    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    write_private(&path, token.as_bytes())?;
                    token
                }
            };
            self.known
                .write()
                .expect("lock")
                .insert(Sha256::digest(token.as_bytes()).into(), caller.clone());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Authenticator for TokenFiles {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.known
            .read()
            .expect("lock")
            .get(&digest)
            .cloned()
            .ok_or(AuthError::Unknown)
    }
}

/// Writes `data` to `path` atomically (temp file + rename) with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        set_mode(&tmp, 0o600)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
