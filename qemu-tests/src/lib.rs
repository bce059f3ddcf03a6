//! Helpers for the end-to-end tests and benches: find the built `ferry`, run the real docker CLI and ssh
//! against a booted appliance, and report named checks ("ok"/"FAIL") with a final summary.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The release `ferry` binary (built by `./ferry test` before the tests run).
pub fn ferry_bin() -> PathBuf {
    std::env::var_os("FERRY_BIN").map(PathBuf::from).unwrap_or_else(|| repo().join("target/x86_64-unknown-linux-gnu/release/ferry"))
}

pub fn out_dir() -> PathBuf {
    std::env::var_os("FERRY_OUT").map(PathBuf::from).unwrap_or_else(|| repo().join("out"))
}

/// Keep every guest of a suite on this machine (and the host's docker CLI config untouched): SNTP off (`ntpserver=`: no lookups of pool.ntp.org), and
/// QEMU's user network restricted so a guest can reach neither the host nor beyond (forwards still work).
/// A test that needs the guest to reach the host's loopback (the SNTP case) clears these for its boot.
pub fn isolate_guests() {
    // Every `ferry` the suite runs boots the build under test, whatever HOME a test gives it.
    if std::env::var_os("FERRY_OUT").is_none() {
        std::env::set_var("FERRY_OUT", out_dir());
    }
    if std::env::var_os("FERRY_APPEND").is_none() {
        std::env::set_var("FERRY_APPEND", "ntpserver=");
    }
    if std::env::var_os("FERRY_NET_RESTRICT").is_none() {
        std::env::set_var("FERRY_NET_RESTRICT", "1");
    }
    // The docker contexts `ferry up` makes go to the suite's own docker CLI config, not the user's.
    if std::env::var_os("DOCKER_CONFIG").is_none() {
        let d = std::env::temp_dir().join(format!("ferry-docker-config-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        std::env::set_var("DOCKER_CONFIG", d);
    }
}

pub struct Report {
    pub passed: usize,
    pub failed: Vec<String>,
    started: Instant,
}

impl Default for Report {
    fn default() -> Self {
        Report { passed: 0, failed: vec![], started: Instant::now() }
    }
}

impl Report {
    /// Record a check. `Err(why)` fails it; the why is printed.
    pub fn check(&mut self, name: &str, r: Result<String, String>) -> bool {
        let t = self.started.elapsed().as_secs_f64();
        match r {
            Ok(note) => {
                println!("ok   [{t:>6.1}s] {name}{}", if note.is_empty() { String::new() } else { format!(" ({note})") });
                self.passed += 1;
                true
            }
            Err(why) => {
                println!("FAIL [{t:>6.1}s] {name}: {why}");
                self.failed.push(name.to_string());
                false
            }
        }
    }

    pub fn finish(self, suite: &str) -> ! {
        println!(
            "\n{suite}: {} passed, {} failed{}",
            self.passed,
            self.failed.len(),
            if self.failed.is_empty() { String::new() } else { format!(" ({})", self.failed.join(", ")) }
        );
        std::process::exit(if self.failed.is_empty() { 0 } else { 1 })
    }
}

/// A suite's named cases: groups of checks that share their boots. `cargo test -p qemu-tests --test disk
/// -- growth` runs the cases whose name contains `growth` (several words: any of them; `--exact`: whole
/// names); `-- --list` prints them. The flags cargo and libtest pass through (`--nocapture`,
/// `--test-threads N`, `-q`, `--color X`, ...) are accepted and ignored: the checks print as they run.
pub struct Cases {
    suite: &'static str,
    names: &'static [&'static str],
    filters: Vec<String>,
    exact: bool,
}

/// libtest's flags that take a value, so the value is not read as a filter.
const LIBTEST_VALUED: &[&str] = &["--test-threads", "--color", "--format", "--skip", "--logfile", "-Z", "--shuffle-seed", "--report-time"];

impl Cases {
    /// Read the command line; `--list` prints the cases and exits, and a filter that names no case is an
    /// error that lists them (a typo never passes as "0 checks, nothing failed").
    pub fn from_args(suite: &'static str, names: &'static [&'static str]) -> Cases {
        Cases::parse(suite, names, std::env::args().skip(1)).unwrap_or_else(|(code, text)| {
            if code == 0 {
                print!("{text}");
            } else {
                eprint!("{text}");
            }
            std::process::exit(code)
        })
    }

    /// As `from_args`, without exiting: Err((exit code, text to print)).
    pub fn parse(
        suite: &'static str,
        names: &'static [&'static str],
        args: impl IntoIterator<Item = String>,
    ) -> Result<Cases, (i32, String)> {
        let mut c = Cases { suite, names, filters: vec![], exact: false };
        let mut list = false;
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--list" => list = true,
                "--exact" => c.exact = true,
                v if LIBTEST_VALUED.contains(&v) => {
                    args.next();
                }
                v if v.starts_with('-') => {}
                _ => c.filters.push(a),
            }
        }
        if list {
            let text: String = names.iter().filter(|n| c.wants(n)).map(|n| format!("{n}: test\n")).collect();
            return Err((0, text));
        }
        if let Some(f) = c.filters.iter().find(|f| !names.iter().any(|n| if c.exact { n == f } else { n.contains(f.as_str()) })) {
            return Err((2, format!("{suite}: no case matches {f:?}; the cases are: {}\n", names.join(", "))));
        }
        Ok(c)
    }

    pub fn wants(&self, name: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| if self.exact { name == f } else { name.contains(f.as_str()) })
    }

    /// Run case `name` (one of the suite's names) if this run asks for it.
    pub fn run(&self, name: &str, f: impl FnOnce()) {
        debug_assert!(self.names.contains(&name), "{name} is not one of the {} suite's cases", self.suite);
        if self.wants(name) {
            println!("== {}: case {name}", self.suite);
            f();
        }
    }

    /// The suite's summary, naming the cases that ran when a filter left some out.
    pub fn finish(&self, r: Report) -> ! {
        if !self.filters.is_empty() {
            let ran: Vec<&str> = self.names.iter().filter(|n| self.wants(n)).copied().collect();
            println!("{}: ran the cases {} (of {})", self.suite, ran.join(", "), self.names.len());
        }
        r.finish(self.suite)
    }
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Run a command with optional stdin and a timeout; Err carries its output.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let desc = format!("{cmd:?}");
    // Its own process group, so a timeout kills what it started too: `ferry ssh` left an ssh client
    // behind whose guest had rebooted, and that client held the output pipe open for good.
    cmd.process_group(0);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{desc}: {e}"))?;
    if let (Some(data), Some(mut si)) = (stdin, child.stdin.take()) {
        let _ = si.write_all(data);
    }
    // Drained while the command runs, so a chatty one never blocks on a full pipe.
    fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() > end => {
                // The group is the child's own pid (process_group(0)), so this ends the child too.
                sigkill(-(child.id() as i32));
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("{desc}: {e}")),
        }
    };
    let o = Output { status: status.unwrap_or_default(), stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() };
    match status {
        None => Err(format!("{desc}: timed out after {}s; output: {}", timeout.as_secs(), text(&o))),
        Some(st) if st.success() => Ok(text(&o)),
        Some(st) => Err(format!("{desc} failed ({st}): {}", text(&o).trim())),
    }
}

/// Docker CLI environment parsed from `ferry up`/`ferry env` output.
#[derive(Clone, Debug, Default)]
pub struct DockerEnv {
    pub host: String,
    pub cert_path: String,
}

impl DockerEnv {
    pub fn parse(exports: &str) -> Option<DockerEnv> {
        let get = |k: &str| exports.lines().find_map(|l| l.strip_prefix(&format!("export {k}=")).map(str::to_string));
        Some(DockerEnv { host: get("DOCKER_HOST")?, cert_path: get("DOCKER_CERT_PATH")? })
    }

    pub fn port(&self) -> u16 {
        self.host.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.host)
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", &self.cert_path)
            .env_remove("DOCKER_CONTEXT");
        c
    }

    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Result<String, String> {
        run(self.docker().args(args), stdin, timeout)
    }
}

/// The client bundle the engine generated in the guest (`~/.docker/{ca,cert,key}.pem`), copied over ssh
/// into `dir` (retried while the engine is still making it), and a docker CLI that uses it.
pub fn guest_client(home: &Path, m: &ferry_builder::machine::Machine, dir: &Path) -> Result<DockerEnv, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        let o = retry(2 * MIN, || ferry(home, &["ssh", &m.name, "--", &format!("cat ~/.docker/{f}")], MIN))?;
        std::fs::write(dir.join(f), o).map_err(|e| e.to_string())?;
    }
    let p = m.ports().map_err(|e| e.to_string())?;
    Ok(DockerEnv { host: format!("tcp://127.0.0.1:{}", p.api), cert_path: dir.display().to_string() })
}

/// The subjectAltName of the certificate the front door at `env` serves (openssl s_client with `env`'s
/// client certificate), retried for a minute until it holds `want`.
pub fn served_san_has(env: &DockerEnv, want: &str) -> Result<String, String> {
    let c = Path::new(&env.cert_path);
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{} -cert {} -key {} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName",
        env.port(),
        c.join("cert.pem").display(),
        c.join("key.pem").display()
    );
    retry(MIN, || contains(run(Command::new("sh").args(["-c", &script]), None, MIN), want))
}

/// A tar of a minimal busybox rootfs (the host's static busybox), for `docker import`. Commands run as
/// `busybox APPLET ...`, so no applet links are needed.
pub fn busybox_rootfs_tar() -> Result<Vec<u8>, String> {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("busybox-static is not installed on the host (./ferry installs it)")?;
    let data = std::fs::read(bb).map_err(|e| format!("read {bb}: {e}"))?;
    if has_interpreter(&data) {
        return Err(format!("{bb} is dynamically linked; install busybox-static"));
    }
    use ferry_contract::userdata::{dir, file, write};
    Ok(write(&[
        dir("bin", 0o755),
        file("bin/busybox", 0o755, data),
        dir("etc", 0o755),
        file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/busybox\n".to_vec()),
        dir("tmp", 0o1777),
    ]))
}

/// Does this ELF64 binary ask for a dynamic loader (a PT_INTERP program header)?
fn has_interpreter(elf: &[u8]) -> bool {
    let rd = |o: usize, n: usize| elf.get(o..o + n).map(|b| b.iter().rev().fold(0usize, |a, &x| (a << 8) | x as usize));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd(0x20, 8), rd(0x36, 2), rd(0x38, 2)) else { return true };
    (0..phnum).any(|i| rd(phoff + i * phentsize, 4) == Some(3))
}

/// Wait until `f` returns Ok or the timeout passes; returns the last result.
pub fn retry<T>(timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let end = Instant::now() + timeout;
    loop {
        let r = f();
        if r.is_ok() || Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub const MIN: Duration = Duration::from_secs(60);

/// Kills every QEMU started under `home` when dropped, whatever happened to the test.
pub struct KillGuard {
    pub home: PathBuf,
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.home.join("machines")) {
            for e in rd.flatten() {
                kill_qemu(&e.path().join("qemu.pid"));
            }
        }
    }
}

/// SIGKILL a process (or, for a negative pid, a process group) this test started.
fn sigkill(pid: i32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) has no memory effects; the pid is one this test started.
    unsafe { kill(pid, 9) };
}

/// SIGKILL the QEMU whose pid file this is (a power cut, as far as the guest can tell).
pub fn kill_qemu(pidfile: &Path) {
    // Only a live QEMU started with this pid file: suites run side by side, and a stale file's pid may
    // belong to another suite's process by now.
    if let Some(pid) = ferry_builder::qemu::pid(pidfile) {
        sigkill(pid);
        ferry_builder::qemu::wait_exit(pidfile, Duration::from_secs(10));
    }
}

/// Run the built `ferry` with FERRY_HOME = `home`.
pub fn ferry(home: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    run(Command::new(ferry_bin()).args(args).env("FERRY_HOME", home), None, timeout)
}

/// Ok when the output contains `want`.
pub fn contains(out: Result<String, String>, want: &str) -> Result<String, String> {
    let o = out?;
    if o.contains(want) {
        Ok(String::new())
    } else {
        Err(format!("expected {want:?} in output: {}", o.trim()))
    }
}

/// The machine's console log so far (lossy: a power cut can leave stray bytes in it).
pub fn console(m: &ferry_builder::machine::Machine) -> String {
    String::from_utf8_lossy(&std::fs::read(m.path("console.log")).unwrap_or_default()).into_owned()
}

/// Ok when `text` holds every string in `wants`.
pub fn text_has(text: &str, wants: &[&str]) -> Result<String, String> {
    let missing: Vec<&&str> = wants.iter().filter(|w| !text.contains(**w)).collect();
    if missing.is_empty() {
        Ok(String::new())
    } else {
        Err(format!("lacks {missing:?}"))
    }
}

/// Ok when the machine's console log holds every string in `wants`.
pub fn console_has(m: &ferry_builder::machine::Machine, wants: &[&str]) -> Result<String, String> {
    text_has(&console(m), wants)
}

/// Poll the console every 20 ms (power cuts must land close to the line they wait for).
pub fn wait_console(m: &ferry_builder::machine::Machine, want: &str, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if console(m).contains(want) {
            return Ok(());
        }
        if m.pid().is_none() && Instant::now() + limit > end + Duration::from_secs(5) {
            return Err(format!("QEMU exited before {want:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "no {want:?} on the console within {}s; tail: {}",
        limit.as_secs(),
        console(m).lines().rev().take(8).collect::<Vec<_>>().join(" | ")
    ))
}

/// Write `data` into an existing file at byte `off` (a disk image's head, a planted string).
pub fn write_at(p: &Path, off: u64, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    f.write_all_at(data, off).map_err(|e| format!("{}: {e}", p.display()))
}

/// Edit the header of tar entry `n` (0-based; entries are found by their size fields), then fix its
/// checksum, so that what a test makes hostile is the field it edits, not the checksum.
pub fn edit_tar_header(tar: &mut [u8], n: usize, edit: impl FnOnce(&mut [u8])) {
    let mut off = 0;
    for _ in 0..n {
        let size = u64::from_str_radix(String::from_utf8_lossy(&tar[off + 124..off + 135]).trim_matches(char::from(0)).trim(), 8)
            .unwrap_or(0) as usize;
        off += 512 + size.div_ceil(512) * 512;
    }
    let h = &mut tar[off..off + 512];
    edit(h);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// The kernel-only floor: the same kernel and QEMU settings booting a tiny initramfs whose init (ours, with
/// `ferry.bench=poweroff`) powers off as soon as it runs. `scratch` holds the initramfs.
pub fn kernel_only_boot(vmlinuz: &Path, scratch: &Path) -> Result<Duration, String> {
    use ferry_builder::cpio::{Body, Writer};
    let init_path = ferry_bin().with_file_name("init");
    let init = std::fs::read(&init_path).map_err(|e| format!("{}: {e} (cargo build --release)", init_path.display()))?;
    let mut w = Writer::new(0);
    w.add("dev", 0o755, Body::Dir);
    w.add("dev/console", 0o600, Body::CharDev(5, 1));
    w.add("proc", 0o755, Body::Dir);
    w.add("sys", 0o755, Body::Dir);
    w.add("init", 0o755, Body::File(&init));
    w.add("ferry-initramfs", 0o644, Body::File(b"bench\n"));
    let tiny = scratch.join("tiny-initrd.img");
    std::fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    std::fs::write(&tiny, w.finish()).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let st = ferry_builder::qemu::poweroff_boot(&ferry_builder::qemu::accel_arg(), "max", 2048, 2, vmlinuz, &tiny)
        .status()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let took = t.elapsed();
    if !st.success() {
        return Err(format!("kernel-only boot failed: {st}"));
    }
    Ok(took)
}

/// Memory in use inside a guest (MemTotal − MemAvailable, MiB), from /proc/meminfo read over `ssh`.
pub fn used_mib(mut ssh: impl FnMut() -> Result<Command, String>) -> Result<u64, String> {
    let meminfo = retry(Duration::from_secs(60), || run(ssh()?.arg("cat /proc/meminfo"), None, Duration::from_secs(60)))?;
    let kb = |k: &str| meminfo.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok());
    match (kb("MemTotal:"), kb("MemAvailable:")) {
        (Some(t), Some(a)) => Ok(t.saturating_sub(a) / 1024),
        _ => Err(format!("no MemTotal/MemAvailable in: {meminfo}")),
    }
}

/// sha256 of a file, hex (via sha256sum: the disks are large and sparse).
pub fn sha256_file(p: &Path) -> Option<String> {
    let o = Command::new("sha256sum").arg(p).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    const NAMES: &[&str] = &["userdata-bytes", "provision-reboot-growth", "power-cuts", "foreign-disks"];

    fn parse(args: &[&str]) -> Result<super::Cases, (i32, String)> {
        super::Cases::parse("disk", NAMES, args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn cases_filter_list_and_refuse_unknown_names() {
        let all = parse(&["--nocapture", "--test-threads", "1"]).unwrap();
        assert!(NAMES.iter().all(|n| all.wants(n)), "no filter: every case");
        let g = parse(&["growth", "-q"]).unwrap();
        assert!(g.wants("provision-reboot-growth") && !g.wants("power-cuts"));
        let two = parse(&["cuts", "foreign"]).unwrap();
        assert_eq!(NAMES.iter().filter(|n| two.wants(n)).count(), 2);
        assert!(parse(&["--exact", "growth"]).is_err(), "--exact wants a whole name");
        assert!(parse(&["--exact", "power-cuts"]).unwrap().wants("power-cuts"));
        let (code, text) = parse(&["grwoth"]).err().unwrap();
        assert!(code == 2 && text.contains("no case matches \"grwoth\"") && text.contains("power-cuts"), "{text}");
        let (code, text) = parse(&["--list", "disks"]).err().unwrap();
        assert_eq!((code, text.as_str()), (0, "foreign-disks: test\n"));
        assert!(parse(&["--test-threads", "growth"]).unwrap().wants("power-cuts"), "a flag's value is not a filter");
    }

    use super::*;

    /// A timeout ends what the command started too: a grandchild holding the output pipe used to hang run().
    #[test]
    fn a_timeout_kills_the_command_and_what_it_started() {
        let t = Instant::now();
        let e = run(Command::new("sh").args(["-c", "echo started; sleep 300 & sleep 300"]), None, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("timed out after 1s") && e.contains("started"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(30), "run() returned after {:?}", t.elapsed());
        let big = run(Command::new("sh").args(["-c", "head -c 1000000 /dev/zero | tr '\\0' x"]), None, Duration::from_secs(60)).unwrap();
        assert_eq!(big.len(), 1_000_000);
    }
}
