//! `ferry`: build the image and run appliances under QEMU.
use ferry_builder::build::{self, Inputs};
use ferry_builder::error::{Error, Result};
use ferry_builder::machine::{self, Machine};
use ferry_builder::{disk, ping, portfwd, qemu, shares, util};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: ferry <command> [args]
  build [--force]          build out/vmlinuz, out/initrd.img, out/manifest.json
  up [NAME] [--disk-size S] [--no-disk] [--share HOST_DIR[:GUEST_DIR][:ro]]... [--no-share]
                           build if needed, boot machine NAME (default: default) with a persistent
                           data disk (default 20G; --no-disk runs from RAM), print DOCKER_* exports;
                           your home is shared at the same path unless --no-share; --share adds
                           folders; the machine remembers its shares; published container ports
                           answer on 127.0.0.1
  disk create PATH --size S [--format raw|qcow2|vmdk|vhd|vhdx|vdi] [--ssh-key K.pub] [--tls DIR]
                           write a format-me data disk (docker-machine's layout; DIR has ca.pem,
                           server.pem, server-key.pem)
  env [NAME]               print the DOCKER_* exports for NAME
  ssh [NAME] [-- CMD...]   ssh into NAME as docker
  stop [NAME]              ACPI power-down through QMP and wait
  rm [NAME]                delete a stopped machine's directory
  ls                       list machines
  logs [NAME]              the machine's console log, then its port agent's log
  accel                    print the accelerator QEMU gets (kvm or tcg) and, on stderr, why

Environment: FERRY_ACCEL=kvm|tcg forces the accelerator (else KVM when a probe VM boots under it).";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ferry: {e}");
            std::process::exit(1);
        }
    }
}

fn out_dir() -> Result<PathBuf> {
    match std::env::var("FERRY_OUT") {
        Ok(o) => Ok(PathBuf::from(o)),
        Err(_) => Ok(util::repo_root()?.join("out")),
    }
}

fn name_arg(args: &[String]) -> &str {
    args.get(1).map(String::as_str).filter(|a| !a.starts_with('-')).unwrap_or("default")
}

/// What the machine shares on this boot (see shares::resolve); saved when the flags changed it.
fn resolve_shares(m: &Machine, new: bool, a: ShareArgs) -> Result<Vec<shares::HostShare>> {
    let base = if a.none {
        vec![]
    } else if new {
        let (home, note) = shares::default_shares();
        if let Some(n) = note {
            eprintln!("ferry: {n}");
        }
        home
    } else {
        m.shares()?
    };
    let changed = new || a.none || !a.specs.is_empty();
    let list = shares::resolve(base, a.specs, a.none)?;
    if changed {
        m.save_shares(&list)?;
    }
    Ok(list)
}

fn run(args: &[String]) -> Result<i32> {
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    match cmd {
        "build" => {
            let inp = Inputs::discover(out_dir()?)?;
            if !build::ensure(&inp, args.iter().any(|a| a == "--force"))? {
                eprintln!("ferry: {} is up to date (use --force to rebuild)", inp.out.display());
            }
            Ok(0)
        }
        "up" => {
            let disk = if args.iter().any(|a| a == "--no-disk") {
                None
            } else {
                Some(disk::parse_size(flag(args, "--disk-size")?.unwrap_or("20G"))?)
            };
            up(name_arg(args), disk, share_args(args)?)
        }
        "accel" => {
            let c = ferry_builder::accel::choice();
            println!("{}", c.kind.name());
            Ok(0)
        }
        "logs" => {
            let m = Machine::named(name_arg(args))?;
            m.ports()?;
            for f in ["console.log", "ports.log"] {
                match std::fs::read(m.path(f)) {
                    Ok(b) => {
                        println!("==> {} <==", m.path(f).display());
                        print!("{}", String::from_utf8_lossy(&b));
                    }
                    Err(_) => println!("==> {}: none yet", m.path(f).display()),
                }
            }
            Ok(0)
        }
        // The published-ports agent `ferry up` starts for a machine (see portfwd.rs).
        "_ports" => {
            portfwd::run(Machine::named(name_arg(args))?)?;
            Ok(0)
        }
        "disk" => disk_cmd(&args[1..]),
        "env" => {
            print!("{}", Machine::named(name_arg(args))?.env_lines()?);
            Ok(0)
        }
        "ssh" => {
            let m = Machine::named(name_arg(args))?;
            let rest: Vec<&String> = args.iter().skip_while(|a| *a != "--").skip(1).collect();
            let st = m.ssh_command()?.args(rest).status().map_err(|e| Error::msg(format!("run ssh: {e}")))?;
            Ok(st.code().unwrap_or(1))
        }
        "stop" => stop(name_arg(args)),
        "rm" => {
            machine::remove(&Machine::named(name_arg(args))?)?;
            Ok(0)
        }
        "ls" => {
            for m in Machine::all() {
                let state = if m.pid().is_some() { "running" } else { "stopped" };
                let url = m.ports().map(|p| format!("tcp://127.0.0.1:{}", p.api)).unwrap_or_default();
                println!("{:<20} {:<8} {}", m.name, state, url);
            }
            Ok(0)
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(0)
        }
        other => Err(Error::msg(format!("unknown command {other:?}\n{USAGE}"))),
    }
}

/// `--share` values (relative to the user's directory) and `--no-share`; neither given keeps what the
/// machine has.
struct ShareArgs {
    specs: Vec<shares::HostShare>,
    none: bool,
}

fn share_args(args: &[String]) -> Result<ShareArgs> {
    let cwd = util::user_cwd();
    let mut specs = vec![];
    for (i, a) in args.iter().enumerate() {
        if a == "--share" {
            let v = args.get(i + 1).ok_or_else(|| Error::msg("--share needs a value: HOST_DIR[:GUEST_DIR][:ro]"))?;
            specs.push(shares::parse_spec(v, &cwd)?);
        } else if let Some(v) = a.strip_prefix("--share=") {
            specs.push(shares::parse_spec(v, &cwd)?);
        }
    }
    Ok(ShareArgs { specs, none: args.iter().any(|a| a == "--no-share") })
}

/// The value after `--name`, if present.
fn flag<'a>(args: &'a [String], name: &str) -> Result<Option<&'a str>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args.get(i + 1).map(|v| Some(v.as_str())).ok_or_else(|| Error::msg(format!("{name} needs a value"))),
    }
}

fn disk_cmd(args: &[String]) -> Result<i32> {
    let (Some("create"), Some(path)) = (args.first().map(String::as_str), args.get(1).filter(|p| !p.starts_with('-'))) else {
        return Err(Error::msg(format!("usage: ferry disk create PATH --size S [--format F] [--ssh-key K.pub] [--tls DIR]\n{USAGE}")));
    };
    let bytes =
        disk::parse_size(flag(args, "--size")?.ok_or_else(|| Error::msg("ferry disk create: --size is required (e.g. --size 20G)"))?)?;
    let format = match flag(args, "--format")? {
        Some(f) => disk::Format::parse(f)?,
        None => disk::Format::Raw,
    };
    let ssh_pub = match flag(args, "--ssh-key")? {
        Some(k) => {
            let data = std::fs::read(util::user_cwd().join(k)).map_err(|e| Error::msg(format!("--ssh-key {k}: {e}")))?;
            if !String::from_utf8_lossy(&data).starts_with("ssh-") && !String::from_utf8_lossy(&data).starts_with("ecdsa-") {
                return Err(Error::msg(format!("--ssh-key {k}: not an OpenSSH public key (pass the .pub file)")));
            }
            Some(data)
        }
        None => None,
    };
    let tls = flag(args, "--tls")?.map(|d| disk::Tls::from_dir(&util::user_cwd().join(d))).transpose()?;
    disk::create(&disk::Spec { path: util::user_cwd().join(path), bytes, format, ssh_pub, tls })?;
    eprintln!("ferry: wrote {path} ({} MiB, {})", bytes.div_ceil(1 << 20), format.qemu_name());
    Ok(0)
}

fn up(name: &str, disk_bytes: Option<u64>, share: ShareArgs) -> Result<i32> {
    let m = Machine::named(name)?;
    let inp = Inputs::discover(out_dir()?)?;
    build::ensure(&inp, false)?;
    let new = !m.exists();
    if m.pid().is_some() && (share.none || !share.specs.is_empty()) {
        return Err(Error::msg(format!("machine {name} is running; its shares change at the next boot: ferry stop {name} first")));
    }
    m.create(disk_bytes)?;
    let shared = resolve_shares(&m, new, share)?;
    let ports = m.ports()?;
    let cfg = Arc::new(ping::client_config(&m.dir)?);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports.api));
    if m.pid().is_none() {
        let step = util::Step::start(format!("boot {name} under QEMU ({})", qemu::accel()));
        for s in &shared {
            eprintln!("    share {} -> {}{}", s.host.display(), s.guest, if s.read_only { " (read-only)" } else { "" });
        }
        let launch = m.launch(&inp.out, &format!("console=tty0 console=ttyS0,115200 quiet panic=-1 ferry.hostname={name}"))?;
        launch.start()?;
        wait_ready(&m, addr, cfg.clone(), Duration::from_secs(600))?;
        step.done("engine answers /_ping over mTLS");
    } else if !ping::ping(addr, cfg) {
        return Err(Error::msg(format!("machine {name} runs but its API does not answer; see {}", m.path("console.log").display())));
    }
    portfwd::ensure(&m)?;
    print!("{}", m.env_lines()?);
    Ok(0)
}

/// Show the console's phase lines as progress while waiting for the API.
fn wait_ready(m: &Machine, addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut shown = 0;
    loop {
        let log = std::fs::read_to_string(m.path("console.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("ferry")).collect();
        for l in &lines[shown.min(lines.len())..] {
            eprintln!("    [{:>5.1}s] {l}", start.elapsed().as_secs_f64());
        }
        shown = lines.len();
        if ping::ping(addr, cfg.clone()) {
            return Ok(());
        }
        if m.pid().is_none() {
            return Err(Error::msg(format!("QEMU exited during boot; console:\n{}", machine::console_tail(m, 30))));
        }
        if start.elapsed() > limit {
            return Err(Error::msg(format!("no answer on {addr} after {}s; console:\n{}", limit.as_secs(), machine::console_tail(m, 30))));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn stop(name: &str) -> Result<i32> {
    let m = Machine::named(name)?;
    if m.pid().is_none() {
        eprintln!("ferry: {name} is not running");
        return Ok(0);
    }
    let t = Instant::now();
    qemu::qmp(&m.path("qmp.sock"), "system_powerdown")?;
    if qemu::wait_exit(&m.path("qemu.pid"), Duration::from_secs(90)) {
        eprintln!("ferry: {name} powered off in {:.1}s", t.elapsed().as_secs_f64());
        return Ok(0);
    }
    if let Some(pid) = m.pid() {
        // SAFETY: killing the QEMU process we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Err(Error::msg(format!("{name} did not power off within 90s; QEMU killed")))
}
