//! The host CLI as a user drives it: `--help` on every command never acts, unknown flags and missing
//! values exit 2 with the usage line, `--version`, completions, relative paths, `ls` (table, JSON, names)
//! with and without a running machine, the docker context used by the real docker CLI with no DOCKER_*
//! variables, `rm`'s refusals and its confirmation-free `-y`, and `up --cpus 1 --memory 1536M
//! --disk-size` on an existing machine checked inside the guest, and a copy of ferry outside the checkout
//! using the XDG directories. Two boots of one machine.
use qemu_tests::*;
use std::path::Path;
use std::process::Command;

const NAME: &str = "cli";

/// `ferry ARGS` from directory `cwd`: (exit code, stdout, stderr). For commands that return at once.
fn ferry_in(home: &Path, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    match Command::new(ferry_bin()).args(args).env("FERRY_HOME", home).env_remove("FERRY_CWD").current_dir(cwd).output() {
        Ok(o) => (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into()),
        Err(e) => (-1, String::new(), e.to_string()),
    }
}

/// The `./ferry` wrapper run with PATH = a directory of stand-ins: `tools` are linked to the host's real
/// ones, `fakes` are shell scripts. Returns (exit code, stderr).
fn wrapper_with(dir: &Path, tools: &[&str], fakes: &[(&str, &str)], args: &[&str]) -> Result<(i32, String), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for t in tools {
        let real = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(t)).find(|p| p.exists());
        let real = real.ok_or_else(|| format!("no {t} on this host"))?;
        std::os::unix::fs::symlink(real, dir.join(t)).map_err(|e| e.to_string())?;
    }
    for (name, script) in fakes {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    }
    let o = Command::new("/bin/bash").arg(repo().join("ferry")).args(args).env("PATH", dir).output().map_err(|e| e.to_string())?;
    Ok((o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into()))
}

/// The wrapper's host checks stop at once, exit 1, and say what is needed and where it comes from.
fn host_checks(base: &Path) -> Result<String, String> {
    const BASIC: &[&str] = &["dirname", "readlink", "sed", "sort", "head", "id", "grep"];
    let with = |extra: &[&'static str]| BASIC.iter().chain(extra).copied().collect::<Vec<&'static str>>();
    let dir = base.join("fake-path");
    struct Case {
        name: &'static str,
        tools: Vec<&'static str>,
        fakes: &'static [(&'static str, &'static str)],
        args: &'static [&'static str],
        want: &'static [&'static str],
    }
    let apt = ["uname", "apt-get", "dpkg-query"];
    let cases = [
        Case {
            name: "not x86_64",
            tools: with(&[]),
            fakes: &[("uname", "echo aarch64")],
            args: &["up"],
            want: &["this host is aarch64", "x86_64 Debian or Ubuntu host"],
        },
        Case {
            name: "no apt",
            tools: with(&["uname"]),
            fakes: &[],
            args: &["up"],
            want: &["not Debian or Ubuntu", "qemu-system-x86", "mmdebstrap", "docker.io", "ovmf", "cargo install"],
        },
        Case { name: "no cargo", tools: with(&apt), fakes: &[], args: &["--version"], want: &["cargo not found", "rustup"] },
        Case {
            name: "old Rust",
            tools: with(&apt),
            fakes: &[("cargo", "exit 0"), ("rustc", "echo 'rustc 1.70.0 (90c541806 2023-05-31)'")],
            args: &["--version"],
            want: &["Rust 1.70 is too old", "rustup update stable"],
        },
    ];
    for c in &cases {
        let (code, err) = wrapper_with(&dir, &c.tools, c.fakes, c.args)?;
        if code != 1 || !c.want.iter().all(|w| err.contains(w)) || err.contains("==>") {
            return Err(format!("{}: exit {code}, stderr {err:?}, wanted {:?}", c.name, c.want));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(String::new())
}

fn machines(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.join("machines"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every command's `--help` (and `-h`) prints usage, exits 0, and leaves the machines as they were.
fn help_never_acts(home: &Path, cwd: &Path) -> Result<String, String> {
    let before = machines(home);
    let running = ferry_in(home, cwd, &["ls", "-q"]).1;
    for cmd in [
        "build",
        "up",
        "disk create",
        "env",
        "ssh",
        "stop",
        &format!("stop {NAME}"),
        "rm",
        &format!("rm {NAME}"),
        &format!("rm -f -y {NAME}"),
        "ls",
        "logs",
        "accel",
        "completion",
        "network",
        "network ls",
        "network rm",
        "network rm lab",
    ] {
        for h in ["--help", "-h"] {
            let mut args: Vec<&str> = cmd.split(' ').collect();
            args.push(h);
            let (code, out, err) = ferry_in(home, cwd, &args);
            if code != 0 || !out.contains("Usage: ferry") {
                return Err(format!("ferry {}: exit {code}: {out}{err}", args.join(" ")));
            }
        }
    }
    if machines(home) != before || ferry_in(home, cwd, &["ls", "-q"]).1 != running {
        return Err(format!("the machines changed: {before:?} -> {:?}", machines(home)));
    }
    Ok(String::new())
}

fn main() {
    isolate_guests();
    let cases = Cases::from_args("cli", &["no-machine", "machine"]);
    let mut r = Report::default();
    println!("cli: the host CLI under QEMU, ferry = {}", ferry_bin().display());
    let base = std::env::temp_dir().join(format!("ferry-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let home = base.join("home");
    let cwd = base.join("work");
    let _ = std::fs::create_dir_all(&cwd);
    let _guard = KillGuard { home: home.clone() };

    cases.run("no-machine", || no_machine(&mut r, &base, &home, &cwd));
    cases.run("machine", || with_machine(&mut r, &home, &cwd));
    let _ = std::fs::remove_dir_all(&base);
    cases.finish(r);
}

/// What needs no machine: help, usage errors, version, completions, relative paths, an empty ls, a copy
/// of ferry outside the checkout.
fn no_machine(r: &mut Report, base: &Path, home: &Path, cwd: &Path) {
    r.check("--help and -h on every command, with no machine: usage, nothing created", help_never_acts(home, cwd));
    r.check("unknown flags and missing values exit 2 with the usage line; nothing created", {
        let cases: [&[&str]; 4] = [&["up", "--bogus"], &["up", "--cpus"], &["rm", "--bogus", "x"], &["nosuchcommand"]];
        cases
            .iter()
            .map(|args| {
                let (code, out, err) = ferry_in(home, cwd, args);
                if code == 2 && err.contains("Usage: ferry") && machines(home).is_empty() {
                    Ok(String::new())
                } else {
                    Err(format!("ferry {}: exit {code}: {out}{err}", args.join(" ")))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|_| String::new())
    });
    r.check("--version names Ferry's version and the image's Docker version", {
        let (code, out, err) = ferry_in(home, cwd, &["--version"]);
        if code == 0 && out.contains("ferry 0.") && out.contains("docker 26.") {
            Ok(String::new())
        } else {
            Err(format!("exit {code}: {out}{err}"))
        }
    });
    r.check("completion bash|zsh|fish print scripts that know the commands", {
        ["bash", "zsh", "fish"]
            .iter()
            .map(|sh| {
                let (code, out, _) = ferry_in(home, cwd, &["completion", sh]);
                if code == 0 && out.contains("ferry") && out.contains("disk") && out.contains("completion") {
                    Ok(())
                } else {
                    Err(format!("completion {sh}: exit {code}"))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|_| String::new())
    });
    r.check("disk create with relative PATH and --ssh-key: both from the user's directory", {
        let _ = std::fs::write(cwd.join("k.pub"), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPi3 rel@test\n");
        let (code, out, err) = ferry_in(home, cwd, &["disk", "create", "rel.img", "--size", "1G", "--ssh-key", "k.pub"]);
        let head = std::fs::read(cwd.join("rel.img")).map(|b| b[..512].to_vec()).unwrap_or_default();
        if code == 0 && head.starts_with(b"boot2docker, please format-me") {
            Ok(String::new())
        } else {
            Err(format!("exit {code}: {out}{err}"))
        }
    });
    r.check(
        "./ferry on a host it cannot serve (not x86_64, no apt, no cargo, old Rust): stops at once and says what to get",
        host_checks(base),
    );
    r.check("ls with no machine: the header only; rm and env of a machine that does not exist fail", {
        let (code, out, _) = ferry_in(home, cwd, &["ls"]);
        let (rm, _, rm_err) = ferry_in(home, cwd, &["rm", "-y", "nosuch"]);
        let (env, _, _) = ferry_in(home, cwd, &["env", "nosuch"]);
        if code == 0 && out == ferry_builder::status::table(&[]) && rm == 1 && env == 1 && rm_err.contains("no machine named nosuch") {
            Ok(String::new())
        } else {
            Err(format!("ls exit {code}: {out:?}; rm exit {rm}: {rm_err}; env exit {env}"))
        }
    });

    r.check("a copy of ferry outside the checkout: the XDG directories, and the checkout's build is current for it", {
        (|| {
            let (bin, xhome) = (base.join("bin/ferry"), base.join("xdg-home"));
            let xout = xhome.join(".local/share/ferry/out");
            std::fs::create_dir_all(base.join("bin")).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&xout).map_err(|e| e.to_string())?;
            std::fs::copy(ferry_bin(), &bin).map_err(|e| e.to_string())?;
            // The build's outputs, as `ferry build` would have left them in the XDG data directory.
            for f in ["manifest.json", "vmlinuz", "initrd.img", "kernel.config", "ferry.iso", "ferry.img"] {
                run(Command::new("cp").args(["--reflink=auto"]).arg(out_dir().join(f)).arg(xout.join(f)), None, 5 * MIN)?;
            }
            let copy = |args: &[&str]| {
                let mut c = Command::new(&bin);
                c.args(args).current_dir(base).env("HOME", &xhome);
                for v in ["FERRY_OUT", "FERRY_HOME", "FERRY_REPO", "FERRY_CWD", "FERRY_CACHE", "XDG_DATA_HOME", "XDG_CACHE_HOME"] {
                    c.env_remove(v);
                }
                run(&mut c, None, 30 * MIN)
            };
            let t = std::time::Instant::now();
            let built = copy(&["build"])?;
            if !built.contains(&format!("{} is up to date", xout.display())) {
                return Err(format!("it built again (or elsewhere): {built}"));
            }
            let version = copy(&["--version"])?;
            let ls = copy(&["ls", "-q"])?;
            if !version.contains("docker 26.") || !ls.trim().is_empty() {
                return Err(format!("--version: {version}; ls -q: {ls:?}"));
            }
            Ok(format!("up to date in {:.1}s", t.elapsed().as_secs_f64()))
        })()
    });
}

/// One machine, two boots: the docker context, ls formats, rm's and up's refusals while it runs, new
/// resources on the existing machine, logs and rm.
fn with_machine(r: &mut Report, home: &Path, cwd: &Path) {
    // Boot 1: a new machine with defaults and a small disk.
    let up = ferry(home, &["up", NAME, "--disk-size", "2G"], 40 * MIN);
    if !r.check("ferry up cli --disk-size 2G", up.as_ref().map(|_| String::new()).map_err(|e| e.clone())) {
        std::mem::take(r).finish("cli");
    }
    let ssh = |cmd: &str| ferry(home, &["ssh", NAME, "--", cmd], 2 * MIN);
    r.check("docker --context ferry-cli version works with no DOCKER_* variables", {
        let o = run(
            Command::new("docker")
                .args(["--context", "ferry-cli", "version", "--format", "{{.Server.Version}}"])
                .env_remove("DOCKER_HOST")
                .env_remove("DOCKER_CERT_PATH")
                .env_remove("DOCKER_TLS_VERIFY"),
            None,
            2 * MIN,
        );
        contains(o, "26.")
    });
    r.check("ls: the running machine with its engine version; --format json parses; -q names it", {
        let (_, table, _) = ferry_in(home, cwd, &["ls"]);
        let (_, json, _) = ferry_in(home, cwd, &["ls", "--format", "json"]);
        let (_, names, _) = ferry_in(home, cwd, &["ls", "-q"]);
        let row = table.lines().find(|l| l.starts_with("cli ")).unwrap_or_default().to_string();
        let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap_or("")).unwrap_or_default();
        if row.contains("running")
            && row.contains("26.")
            && row.contains("2G")
            && v["Name"] == "cli"
            && v["State"] == "running"
            && v["CPUs"] == 2
            && v["Docker"].as_str().is_some_and(|d| d.starts_with("26."))
            && names.trim() == "cli"
        {
            Ok(String::new())
        } else {
            Err(format!("table {table:?}; json {json:?}; names {names:?}"))
        }
    });
    r.check("--help on rm, stop and up never act on the running machine", help_never_acts(home, cwd));
    r.check("rm refuses a running machine without -f; up --cpus on a running machine is refused", {
        let (rm, _, rm_err) = ferry_in(home, cwd, &["rm", "-y", NAME]);
        let (upc, _, up_err) = ferry_in(home, cwd, &["up", NAME, "--cpus", "1"]);
        if rm == 1 && rm_err.contains("is running") && upc == 1 && up_err.contains("ferry stop cli first") && machines(home) == ["cli"] {
            Ok(String::new())
        } else {
            Err(format!("rm exit {rm}: {rm_err}; up exit {upc}: {up_err}"))
        }
    });
    let disk_kib = || -> Result<u64, String> {
        let o = ssh("df -k /mnt/vda1 | tail -1")?;
        o.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(format!("df: {o}"))
    };
    let before = disk_kib().unwrap_or(0);
    r.check("stop; ls says stopped", {
        ferry(home, &["stop", NAME], 3 * MIN).and_then(|_| {
            let (_, t, _) = ferry_in(home, cwd, &["ls"]);
            if t.lines().any(|l| l.starts_with("cli ") && l.contains("stopped")) {
                Ok(String::new())
            } else {
                Err(t)
            }
        })
    });
    r.check("a smaller --disk-size is refused and nothing boots", {
        let (code, _, err) = ferry_in(home, cwd, &["up", NAME, "--disk-size", "1G"]);
        let (_, t, _) = ferry_in(home, cwd, &["ls"]);
        if code == 1 && err.contains("never shrunk") && t.contains("stopped") {
            Ok(String::new())
        } else {
            Err(format!("exit {code}: {err}; ls {t}"))
        }
    });

    // Boot 2: the same machine with 1 CPU, 1536 MiB and a 3 GiB disk.
    r.check("up --cpus 1 --memory 1536M --disk-size 3G on the existing machine: seen inside the guest", {
        ferry(home, &["up", NAME, "--cpus", "1", "--memory", "1536M", "--disk-size", "3G"], 40 * MIN).and_then(|_| {
            let o = ssh("nproc; grep MemTotal /proc/meminfo")?;
            let mut l = o.lines();
            let cpus = l.next().unwrap_or("").trim().to_string();
            let mem_kib: u64 = l.next().and_then(|m| m.split_whitespace().nth(1)).and_then(|k| k.parse().ok()).unwrap_or(0);
            let after = disk_kib()?;
            // MemTotal is what the kernel keeps after its own reservations: a little under 1536 MiB.
            if cpus == "1" && (1300 * 1024..=1536 * 1024).contains(&mem_kib) && after > before + 900 * 1024 {
                Ok(String::new())
            } else {
                Err(format!("nproc {cpus}, MemTotal {mem_kib} kB, disk {before} -> {after} KiB"))
            }
        })
    });
    r.check("logs -f of a stopped machine prints the console and ends", {
        ferry(home, &["stop", NAME], 3 * MIN)
            .and_then(|_| run(Command::new(ferry_bin()).args(["logs", NAME, "-f"]).env("FERRY_HOME", home), None, MIN))
            .and_then(|o| if o.contains("engine ready") { Ok(String::new()) } else { Err(o) })
    });
    r.check("rm -y removes the stopped machine and its docker context", {
        let (code, _, err) = ferry_in(home, cwd, &["rm", "-y", NAME]);
        let ctx = Command::new("docker").args(["context", "inspect", "ferry-cli"]).output().map(|o| o.status.success()).unwrap_or(true);
        if code == 0 && machines(home).is_empty() && !ctx && err.contains("docker context ferry-cli removed") {
            Ok(String::new())
        } else {
            Err(format!("exit {code}: {err}; context still there: {ctx}"))
        }
    });
}
