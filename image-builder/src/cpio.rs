//! A newc (SVR4, no CRC) cpio writer for the initramfs. Entries are written in the order given; the
//! caller sorts them. Inode numbers are sequential and all times are the build time (reproducible).

pub enum Body<'a> {
    File(&'a [u8]),
    Dir,
    Symlink(&'a str),
    /// Character device (major, minor).
    CharDev(u32, u32),
}

pub struct Writer {
    out: Vec<u8>,
    ino: u32,
    mtime: u32,
}

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Writer {
    pub fn new(mtime: u32) -> Writer {
        Writer { out: Vec::new(), ino: 1, mtime }
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32), nlink: u32) {
        let fields = [self.ino, mode, 0, 0, nlink, self.mtime, size as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// `name` is relative (no leading `/`), as the kernel expects.
    pub fn add(&mut self, name: &str, perm: u32, body: Body) {
        let name = name.trim_start_matches('/');
        match body {
            Body::File(d) => {
                self.header(name, S_IFREG | perm, d.len(), (0, 0), 1);
                self.out.extend_from_slice(d);
                self.pad();
            }
            Body::Dir => self.header(name, S_IFDIR | perm, 0, (0, 0), 2),
            Body::Symlink(t) => {
                self.header(name, S_IFLNK | 0o777, t.len(), (0, 0), 1);
                self.out.extend_from_slice(t.as_bytes());
                self.pad();
            }
            Body::CharDev(maj, min) => self.header(name, S_IFCHR | perm, 0, (maj, min), 1),
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.header("TRAILER!!!", 0, 0, (0, 0), 1);
        // The kernel reads archives in 512-byte friendly chunks; pad like cpio(1) does.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], i: usize) -> u32 {
        u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap()
    }

    #[test]
    fn layout_matches_newc() {
        let mut w = Writer::new(1_700_000_000);
        w.add("dev", 0o755, Body::Dir);
        w.add("dev/console", 0o600, Body::CharDev(5, 1));
        w.add("/init", 0o755, Body::File(b"#!x"));
        w.add("bin/sh", 0, Body::Symlink("busybox"));
        let a = w.finish();
        assert_eq!(a.len() % 512, 0);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(field(&a, 1), 0o040755);
        assert_eq!(field(&a, 5), 1_700_000_000);
        assert_eq!(field(&a, 11), 4); // "dev\0"
                                      // Header 110 bytes + "dev\0" = 114 -> padded to 116.
        let second = &a[116..];
        assert_eq!(&second[..6], b"070701");
        assert_eq!(field(second, 1), 0o020600);
        assert_eq!((field(second, 9), field(second, 10)), (5, 1));
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("init\0"));
        assert!(text.contains("#!x"));
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn readable_by_cpio_tool() {
        // Real parts: GNU cpio must list what we wrote.
        if std::process::Command::new("cpio").arg("--version").output().is_err() {
            panic!("cpio(1) is not installed; ./ferry installs it (apt-get install cpio)");
        }
        let mut w = Writer::new(0);
        w.add("a", 0o755, Body::Dir);
        w.add("a/b.txt", 0o644, Body::File(b"hello"));
        w.add("a/link", 0, Body::Symlink("b.txt"));
        let data = w.finish();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a\na/b.txt\na/link\n");
    }
}
