//! `/var/lib/boot2docker/profile`, the shell fragment docker-machine writes. It is evaluated the way
//! boot2docker did (`set -a; . profile`), but in a child shell with a clean environment and a timeout, and
//! what it exported is turned into dockerd flags, TLS paths and dockerd's environment.
use crate::error::{Error, Kind, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const PATH: &str = ferry_contract::paths::PROFILE;
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The environment dump is small; a profile that exports more than this is refused.
const MAX_ENV: usize = 1 << 20;
/// Of the profile's own output only the end is kept (for the error message); the rest is read and dropped
/// so a chatty or endless profile can neither block on a full pipe nor fill the engine manager's memory.
const KEEP_OUTPUT: usize = 4096;

/// Variables with a meaning to Ferry; every other exported variable goes to dockerd's environment.
const KNOWN: &[&str] = &["EXTRA_ARGS", "DOCKER_HOST", "DOCKER_STORAGE", "DOCKER_TLS", "CACERT", "SERVERCERT", "SERVERKEY"];
/// boot2docker settings Ferry has no use for (said once, then ignored).
const IGNORED: &[&str] = &["DOCKER_DIR", "DOCKER_RAMDISK", "DOCKER_ULIMITS", "DOCKER_LOGFILE", "DOCKER_DAEMON_ARGS"];
/// What the evaluating shell itself sets.
const SHELL: &[&str] = &["PATH", "PWD", "OLDPWD", "SHLVL", "_", "IFS", "PS1", "PS2", "PS4", "OPTIND", "HOME"];

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Profile {
    /// Extra dockerd flags (EXTRA_ARGS minus what the engine manager owns, DOCKER_STORAGE).
    pub args: Vec<String>,
    /// False only for an explicit DOCKER_TLS=no.
    pub tls: bool,
    /// CACERT / SERVERCERT / SERVERKEY, when all three are set.
    pub tls_files: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Exported variables for dockerd (proxies and the like).
    pub env: Vec<(String, String)>,
    /// Warnings to show on the console.
    pub notes: Vec<String>,
    /// A `--config-file` from EXTRA_ARGS, read instead of /etc/docker/daemon.json.
    pub config_file: Option<String>,
}

/// Long flags that belong to the engine manager (it owns the sockets, TLS and the config file it hands
/// dockerd); dropped from EXTRA_ARGS. The bool says whether the flag takes a separate value when written
/// without `=`.
const OWNED_LONG: &[(&str, bool)] = &[
    ("--host", true),
    ("--tls", false),
    ("--tlsverify", false),
    ("--tlscacert", true),
    ("--tlscert", true),
    ("--tlskey", true),
    ("--config-file", true),
];
/// dockerd's one-letter flags that take no value, so they may be bundled in front of another (`-DH x`).
const BOOL_SHORT: &[char] = &['D', 'v', 'h'];

/// If `word` is (or bundles) a flag the engine manager owns, whether its value is the next word.
/// Every spelling dockerd's flag parser accepts counts: `-H x`, `-Hx`, `-H=x`, `-DH x`, `--host x`, `--host=x`.
pub fn owned(word: &str) -> Option<bool> {
    if let Some(long) = word.strip_prefix("--") {
        let (name, inline) = match long.split_once('=') {
            Some((n, _)) => (n, true),
            None => (long, false),
        };
        return OWNED_LONG.iter().find(|(f, _)| &f[2..] == name).map(|(_, takes)| *takes && !inline);
    }
    let short = word.strip_prefix('-')?;
    for (i, c) in short.char_indices() {
        if c == 'H' {
            return Some(short.len() == i + 1);
        }
        if !BOOL_SHORT.contains(&c) {
            // A flag that takes a value: the rest of the word is that value, not more flags.
            return None;
        }
    }
    None
}

pub fn from_vars(vars: &[(String, String)]) -> Profile {
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut p = Profile { tls: true, ..Default::default() };
    let words: Vec<&str> = get("EXTRA_ARGS").unwrap_or("").split_whitespace().collect();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if let Some(takes) = owned(w) {
            let skip = if takes && i + 1 < words.len() { 2 } else { 1 };
            // The config file is not dropped but taken over: dockerd gets a cleaned copy of it.
            if let Some(v) = w.strip_prefix("--config-file=") {
                p.config_file = Some(v.to_string());
            } else if w == "--config-file" && skip == 2 {
                p.config_file = Some(words[i + 1].to_string());
            }
            p.notes.push(format!(
                "EXTRA_ARGS: ignoring {} (the engine manager owns the listeners, TLS and the config file)",
                words[i..i + skip].join(" ")
            ));
            i += skip;
            continue;
        }
        p.args.push(w.to_string());
        i += 1;
    }
    if let Some(h) = get("DOCKER_HOST") {
        for w in h.split_whitespace().filter(|w| w.starts_with("tcp://")) {
            if !w.ends_with(":2376") {
                p.notes.push(format!("DOCKER_HOST: {w} ignored; the API is served on :2376 (TLS) only"));
            }
        }
    }
    match get("DOCKER_STORAGE").map(str::trim) {
        None | Some("") => {}
        Some("aufs") => p.notes.push("DOCKER_STORAGE=aufs ignored: this kernel has no aufs; using overlay2".into()),
        Some(d) => {
            p.args.push("--storage-driver".into());
            p.args.push(d.into());
        }
    }
    if get("DOCKER_TLS").map(str::trim) == Some("no") {
        p.tls = false;
    }
    let files: Vec<&str> = ["CACERT", "SERVERCERT", "SERVERKEY"].iter().filter_map(|k| get(k)).filter(|v| !v.trim().is_empty()).collect();
    match files.as_slice() {
        [ca, cert, key] => p.tls_files = Some((ca.trim().into(), cert.trim().into(), key.trim().into())),
        [] => {}
        _ => p.notes.push("CACERT, SERVERCERT and SERVERKEY must be set together; ignoring them".into()),
    }
    for (k, v) in vars {
        if KNOWN.contains(&k.as_str()) || SHELL.contains(&k.as_str()) {
            continue;
        }
        if IGNORED.contains(&k.as_str()) {
            p.notes.push(format!("{k} is a boot2docker setting Ferry does not use; ignored"));
            continue;
        }
        p.env.push((k.clone(), v.clone()));
    }
    p
}

/// Split `env -0` output into (name, value) pairs.
pub fn parse_env0(out: &[u8]) -> Vec<(String, String)> {
    out.split(|&b| b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Evaluate the profile at `path`. Ok(None) when there is none; Err says what went wrong (exit status,
/// the shell's complaint, or the timeout), and the caller starts dockerd with defaults.
pub async fn load(path: &Path, timeout: Duration) -> Result<Option<Profile>> {
    if !path.exists() {
        return Ok(None);
    }
    let mut cmd = tokio::process::Command::new("/bin/sh");
    // -a (allexport): plain assignments are exported, as boot2docker's `set -a` did. The profile's own
    // output goes to stderr so stdout carries only the environment dump.
    cmd.args(["-a", "-c", ". \"$1\" 1>&2 && exec env -0", "ferry-profile"])
        .arg(path)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| Error::msg(format!("{}: start /bin/sh: {e}", path.display())))?;
    let pid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async { tokio::join!(read_bounded(stdout, MAX_ENV, false), read_bounded(stderr, KEEP_OUTPUT, true), child.wait()) };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            if let Some(pid) = pid {
                // The process group we created for the profile.
                if let Some(group) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
            }
            Err(Error::of(
                Kind::ProfileTimeout,
                format!("{} did not finish within {}s (an endless loop?); it was killed", path.display(), timeout.as_secs()),
            ))
        }
        Ok((_, _, Err(e))) => Err(Error::msg(format!("{}: {e}", path.display()))),
        Ok(((env, env_over), (talk, _), Ok(status))) => {
            let stderr = String::from_utf8_lossy(&talk);
            // The last three lines, each cut to 200 characters, say why it failed.
            let tail: Vec<String> =
                stderr.lines().rev().take(3).map(|l| l.chars().take(200).collect()).collect::<Vec<_>>().into_iter().rev().collect();
            if !status.success() {
                return Err(Error::of(Kind::ProfileFailed, format!("{} failed ({}): {}", path.display(), status, tail.join(" / "))));
            }
            if env_over {
                return Err(Error::of(
                    Kind::ProfileFailed,
                    format!("{} exports more than {} KiB of variables; refusing it", path.display(), MAX_ENV >> 10),
                ));
            }
            if env.is_empty() {
                return Err(Error::of(Kind::ProfileFailed, format!("{} exited before it finished (an `exit` in it?)", path.display())));
            }
            Ok(Some(from_vars(&parse_env0(&env))))
        }
    }
}

/// Read a pipe to its end, keeping at most `cap` bytes: the first ones, or with `tail` the last ones.
/// Returns the bytes kept and whether more came.
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(r: Option<R>, cap: usize, tail: bool) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let (mut kept, mut over) = (Vec::new(), false);
    let Some(mut r) = r else { return (kept, over) };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, over),
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > cap {
                    over = true;
                    if tail {
                        kept.drain(..kept.len() - cap);
                    } else {
                        kept.truncate(cap);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn docker_machine_profile() {
        let p = from_vars(&vars(&[
            ("EXTRA_ARGS", "\n--label provider=qemu\n--label env=test\n--insecure-registry 10.0.0.1:5000\n\n"),
            ("CACERT", "/var/lib/boot2docker/ca.pem"),
            ("DOCKER_HOST", "-H tcp://0.0.0.0:2376"),
            ("DOCKER_STORAGE", "overlay2"),
            ("DOCKER_TLS", "auto"),
            ("SERVERKEY", "/var/lib/boot2docker/server-key.pem"),
            ("SERVERCERT", "/var/lib/boot2docker/server.pem"),
            ("HTTP_PROXY", "http://proxy:3128"),
            ("PWD", "/"),
        ]));
        assert_eq!(
            p.args,
            ["--label", "provider=qemu", "--label", "env=test", "--insecure-registry", "10.0.0.1:5000", "--storage-driver", "overlay2"]
        );
        assert!(p.tls);
        assert_eq!(p.tls_files.as_ref().map(|t| t.0.clone()), Some(PathBuf::from("/var/lib/boot2docker/ca.pem")));
        assert_eq!(p.env, vars(&[("HTTP_PROXY", "http://proxy:3128")]));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn owned_flags_aufs_and_partial_tls_are_reported() {
        let p = from_vars(&vars(&[
            ("EXTRA_ARGS", "-H tcp://0.0.0.0:2375 --tlsverify --tlscacert=/x --debug"),
            ("DOCKER_STORAGE", "aufs"),
            ("DOCKER_TLS", "no"),
            ("CACERT", "/x"),
            ("DOCKER_HOST", "-H tcp://0.0.0.0:2375"),
        ]));
        assert_eq!(p.args, ["--debug"]);
        assert!(!p.tls);
        assert_eq!(p.tls_files, None);
        assert_eq!(p.notes.len(), 6, "{:?}", p.notes);
    }

    /// Every spelling of -H that dockerd's flag parser accepts is dropped, values attached or not; flags
    /// that merely look alike are kept.
    #[test]
    fn every_host_spelling_is_owned() {
        for (extra, kept) in [
            ("-Htcp://0.0.0.0:2375 --debug", vec!["--debug"]),
            ("-H=tcp://0.0.0.0:2375", vec![]),
            ("-H tcp://0.0.0.0:2375 -D", vec!["-D"]),
            ("--host=tcp://0.0.0.0:2375", vec![]),
            ("--host tcp://0.0.0.0:2375 --label a=b", vec!["--label", "a=b"]),
            ("-DH tcp://0.0.0.0:2375", vec![]),
            ("-DHtcp://0.0.0.0:2375", vec![]),
            ("--config-file /x.json --tlsverify=false", vec![]),
            ("-l debug -G staff -s vfs", vec!["-l", "debug", "-G", "staff", "-s", "vfs"]),
            ("-lH", vec!["-lH"]),
            ("--hosts-file x", vec!["--hosts-file", "x"]),
        ] {
            let p = from_vars(&vars(&[("EXTRA_ARGS", extra)]));
            assert_eq!(p.args, kept, "{extra}");
            assert!(p.args.iter().all(|a| !a.contains("tcp://")), "{extra}");
        }
        assert_eq!(from_vars(&vars(&[("EXTRA_ARGS", "--config-file=/a.json")])).config_file.as_deref(), Some("/a.json"));
        assert_eq!(from_vars(&vars(&[("EXTRA_ARGS", "--config-file /b.json")])).config_file.as_deref(), Some("/b.json"));
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ferry-profile-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Real /bin/sh: docker-machine's exact quoting, and each kind of broken profile.
    #[tokio::test(flavor = "multi_thread")]
    async fn evaluation_with_a_real_shell() {
        let good = write("good", "EXTRA_ARGS='\n--label a=b\n'\nDOCKER_TLS=auto\necho chatter\nexport \"HTTP_PROXY=http://p:3128\"\n");
        let p = load(&good, TIMEOUT).await.unwrap().unwrap();
        assert_eq!(p.args, ["--label", "a=b"]);
        assert_eq!(p.env, vars(&[("HTTP_PROXY", "http://p:3128")]));
        let e = load(&write("exit", "exit 1\n"), TIMEOUT).await.unwrap_err();
        assert_eq!(e.kind, Kind::ProfileFailed);
        let e = e.to_string();
        assert!(e.contains("exit status: 1"), "{e}");
        let e = load(&write("syntax", "if then fi (\n"), TIMEOUT).await.unwrap_err().to_string();
        assert!(e.contains("failed") && e.to_lowercase().contains("syntax"), "{e}");
        let t = std::time::Instant::now();
        let e = load(&write("loop", "while :; do :; done\n"), Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(e.kind, Kind::ProfileTimeout);
        let e = e.to_string();
        assert!(e.contains("did not finish within 1s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(load(Path::new("/nonexistent/profile"), TIMEOUT).await.unwrap(), None);
        // 64 MiB of chatter, then a failure: only the end is kept, and it names the failure.
        let e = load(&write("chatty", "head -c 67108864 /dev/zero | tr '\\0' x; echo; echo last words; exit 3\n"), TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status: 3") && e.contains("last words") && e.len() < 1024, "{}", &e[..e.len().min(300)]);
        // An endless talker is killed at the timeout like an endless loop.
        let e = load(&write("endless", "yes endless\n"), Duration::from_secs(1)).await.unwrap_err().to_string();
        assert!(e.contains("did not finish within 1s"), "{e}");
        // Exporting more than a MiB is refused (one variable is capped at 128 KiB by the kernel; twelve are not).
        let e = load(
            &write("huge", "v=$(head -c 100000 /dev/zero | tr '\\0' a); for i in 1 2 3 4 5 6 7 8 9 10 11 12; do eval \"V$i=$v\"; done\n"),
            TIMEOUT,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("exports more than 1024 KiB"), "{e}");
    }

    #[test]
    fn env0_parsing() {
        assert_eq!(parse_env0(b"A=1\0B=x=y\0=bad\0\0"), vars(&[("A", "1"), ("B", "x=y")]));
    }
}
