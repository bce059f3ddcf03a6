//! The one way Ferry replaces a file, in the guest and on the host alike: a power cut or a crash leaves
//! the old contents or the new ones, never a part. A temporary file beside the target (made fresh, so
//! never followed through a symlink), fsync, rename over the target, then fsync of the directory so the
//! rename itself is on the disk.
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The temporary file's name: the target's with `.PID.ferry-tmp` appended (not replacing its extension,
/// so `a.pem` and `a.key` never share one; the pid keeps two processes writing one file apart). Within a
/// process, one writer per file at a time.
pub fn temp_for(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{}.ferry-tmp", std::process::id()));
    PathBuf::from(name)
}

/// Replace `path` with `data`, created with `mode` (less the umask). The error names the step and file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_for(path);
    let step = |what: &str, p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()));
    // A leftover from an interrupted write (or a symlink someone planted) goes first; create_new then
    // refuses anything that appears in between.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(step("remove", &tmp, e)),
        _ => {}
    }
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(|e| step("create", &tmp, e))?;
        f.write_all(data).map_err(|e| step("write", &tmp, e))?;
        f.sync_all().map_err(|e| step("fsync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| step("rename over", path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // Best effort: some filesystems (9p shares, for one) cannot fsync a directory; the data is safe anyway.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_files_with_their_mode_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("ferry-contract-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("key.pem");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!temp_for(&p).exists());
        // A symlink planted where the temporary goes is removed, never written through.
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, temp_for(&p)).unwrap();
        write_atomic(&p, b"three", 0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        // A failure names the step and the file, and leaves the old file as it was.
        let e = write_atomic(&dir.join("missing/x"), b"x", 0o644).unwrap_err();
        assert!(e.to_string().contains("create") && e.to_string().contains(".ferry-tmp"), "{e}");
        assert_eq!(temp_for(&p), dir.join(format!("key.pem.{}.ferry-tmp", std::process::id())));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
