//! The audit signing key: 32 random bytes in `<data-dir>/audit.key` (mode 0600), created on first
//! start from the operating system's random source.

use std::io::Write;
use std::path::Path;

use marketgov_audit::CheckpointSigner;

use crate::Error;

/// The key file's name inside the data directory.
pub const AUDIT_KEY_FILE: &str = "audit.key";

/// Loads the signing key, creating it on first start.
pub fn load_or_create(dir: &Path) -> Result<CheckpointSigner, Error> {
    let path = dir.join(AUDIT_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let secret: [u8; 32] = bytes
                .try_into()
                .map_err(|_| Error::Setup(format!("{} is not a 32-byte key", path.display())))?;
            Ok(CheckpointSigner::from_secret(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::getrandom(&mut secret)
                .map_err(|e| Error::Setup(format!("no random source: {e}")))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options
                .open(&path)
                .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
            file.write_all(&secret)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
            Ok(CheckpointSigner::from_secret(&secret))
        }
        Err(e) => Err(Error::Setup(format!("{}: {e}", path.display()))),
    }
}
