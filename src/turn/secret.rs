//! The REST-API secret of the built-in TURN server when `turn.secret` is
//! unset: made once, kept in `data_dir/turn/secret` (0600), so credentials
//! handed out before a restart stay valid after it.

use anyhow::{Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use std::path::Path;

/// The secret in `data_dir/turn/secret`, created on first use.
pub fn load_or_create_secret(data_dir: &Path) -> Result<String> {
    let dir = data_dir.join("turn");
    let path = dir.join("secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if s.len() >= 16 {
            return Ok(s);
        }
        anyhow::bail!(
            "{} is shorter than 16 characters; delete it to make a new one",
            path.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let secret = B64.encode(rand::random::<[u8; 32]>());
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    use std::io::Write;
    o.open(&path)
        .and_then(|mut f| f.write_all(secret.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept_private() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(d.path()).unwrap();
        assert!(a.len() >= 40);
        assert_eq!(load_or_create_secret(d.path()).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(d.path().join("turn/secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
        }
    }
}
