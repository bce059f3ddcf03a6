//! `ferry`: build the image and run appliances under QEMU. The command line is clap's: `--help` on every
//! command never acts, an unknown flag or a missing value exits with 2 and the usage line.
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use ferry_builder::build::{self, Inputs};
use ferry_builder::error::{Error, Result};
use ferry_builder::machine::{self, Machine, Shell};
use ferry_builder::network::{self, Network};
use ferry_builder::settings::{self, Settings};
use ferry_builder::{context, disk, ping, portfwd, qemu, shares, status, switch, util};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "ferry",
    about = "Build the Ferry appliance and run it under QEMU",
    disable_version_flag = true,
    arg_required_else_help = true,
    after_help = "Environment: FERRY_HOME (machines; default ~/.local/share/ferry), FERRY_OUT (build output; default\n~/.local/share/ferry/out, the checkout's out/ through ./ferry), FERRY_CACHE (downloads; default ~/.cache/ferry),\nXDG_DATA_HOME and XDG_CACHE_HOME move the defaults, FERRY_ACCEL=kvm|tcg (force the accelerator; else KVM when a probe VM boots under it)."
)]
struct Cli {
    /// Print Ferry's version and the Docker version in the image
    #[arg(short = 'V', long)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build out/vmlinuz, out/initrd.img, out/ferry.iso, out/ferry.img and out/manifest.json
    Build {
        /// Rebuild even when out/ is current
        #[arg(long)]
        force: bool,
    },
    /// Build if needed, boot machine NAME, create its docker context, print the DOCKER_* exports
    Up(UpArgs),
    /// Data disks for any hypervisor
    Disk {
        #[command(subcommand)]
        cmd: DiskCmd,
    },
    /// Print the DOCKER_* exports for a machine
    Env {
        #[arg(default_value = "default")]
        name: String,
        /// The shell to print for
        #[arg(long, value_enum, default_value = "bash")]
        shell: ShellKind,
        /// Print the commands that remove the variables instead
        #[arg(long)]
        unset: bool,
    },
    /// ssh into a machine as docker (a command after --)
    Ssh {
        #[arg(default_value = "default")]
        name: String,
        /// The command to run, after --
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Power a machine down through ACPI and wait
    Stop {
        #[arg(default_value = "default")]
        name: String,
    },
    /// Delete a machine: its directory, data disk and docker context
    Rm {
        name: String,
        /// Stop (kill) a running machine first
        #[arg(short, long)]
        force: bool,
        /// Do not ask for confirmation
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// List machines
    Ls {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Only the names
        #[arg(short, long)]
        quiet: bool,
    },
    /// The machine's console log and its port agent's log
    Logs {
        #[arg(default_value = "default")]
        name: String,
        /// Keep printing the console as it grows, until the machine stops
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the accelerator QEMU gets (kvm or tcg) and, on stderr, why
    Accel,
    /// Shared networks between machines (`ferry up NAME --network NET`)
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// Shell completions: `ferry completion bash > /etc/bash_completion.d/ferry`
    Completion { shell: clap_complete::Shell },
    /// The published-ports agent `ferry up` starts for a machine
    #[command(name = "_ports", hide = true)]
    Ports { name: String },
    /// The switch of a shared network, started by `ferry up`
    #[command(name = "_switch", hide = true)]
    Switch { name: String },
}

#[derive(Subcommand)]
enum NetworkCmd {
    /// List shared networks, their subnets and machines
    Ls {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Only the names
        #[arg(short, long)]
        quiet: bool,
    },
    /// Delete a shared network (refused while a machine on it runs; stopped machines leave it)
    Rm { name: String },
}

#[derive(Args)]
struct UpArgs {
    #[arg(default_value = "default")]
    name: String,
    /// CPUs for this and later boots (default 2)
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory for this and later boots, e.g. 1536M or 2G (default 2G)
    #[arg(long)]
    memory: Option<String>,
    /// Size of the data disk (default 20G); an existing disk grows to it, never shrinks
    #[arg(long)]
    disk_size: Option<String>,
    /// No data disk: everything in RAM
    #[arg(long, conflicts_with = "disk_size")]
    no_disk: bool,
    /// Share a host folder: HOST_DIR[:GUEST_DIR][:ro] (repeatable; remembered by the machine)
    #[arg(long, value_name = "HOST_DIR[:GUEST_DIR][:ro]")]
    share: Vec<String>,
    /// Share nothing, not even the home directory
    #[arg(long)]
    no_share: bool,
    /// Join shared network NET (made when new): a second NIC with a fixed address, reaching every machine on
    /// NET (repeatable; remembered by the machine)
    #[arg(long, value_name = "NET")]
    network: Vec<String>,
    /// Leave every shared network
    #[arg(long, conflicts_with = "network")]
    no_network: bool,
}

#[derive(Subcommand)]
enum DiskCmd {
    /// Write a format-me data disk (docker-machine's layout)
    Create {
        path: String,
        /// Size, e.g. 20G
        #[arg(long)]
        size: String,
        #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi"])]
        format: String,
        /// An OpenSSH public key for the docker user
        #[arg(long, value_name = "KEY.pub")]
        ssh_key: Option<String>,
        /// A directory with ca.pem, server.pem and server-key.pem for the engine
        #[arg(long, value_name = "DIR")]
        tls: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ShellKind {
    Bash,
    Fish,
    Powershell,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Parse the command line; a mistake exits 2 with clap's message and always the usage line (clap leaves it
/// out of some errors, e.g. a missing value).
fn parse() -> Cli {
    let e = match Cli::try_parse() {
        Ok(c) => return c,
        Err(e) => e,
    };
    if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
        e.exit();
    }
    let text = e.render().to_string();
    eprint!("{text}");
    if !text.contains("Usage:") {
        let mut cmd = Cli::command();
        // Built, every subcommand knows its full name ("ferry up").
        cmd.build();
        let sub = std::env::args().nth(1).unwrap_or_default();
        let usage = match cmd.find_subcommand_mut(&sub) {
            Some(s) => s.render_usage().to_string(),
            None => cmd.render_usage().to_string(),
        };
        eprintln!("\n{usage}");
    }
    std::process::exit(2);
}

fn main() {
    let cli = parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ferry: {e}");
            std::process::exit(1);
        }
    }
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

/// Ferry's version and the Docker engine's in the built image (from out/manifest.json).
fn version_line() -> String {
    let docker = std::fs::read_to_string(util::out_dir().join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|m| {
            m.get("packages")?.as_array()?.iter().find(|p| p["name"] == "docker.io").and_then(|p| p["version"].as_str().map(str::to_string))
        });
    match docker {
        Some(v) => format!(
            "ferry {}\ndocker {} (Debian docker.io {v}, in the built image)",
            env!("CARGO_PKG_VERSION"),
            v.split(['+', '-']).next().unwrap_or(&v)
        ),
        None => format!("ferry {}\ndocker: no image built yet (ferry build)", env!("CARGO_PKG_VERSION")),
    }
}

fn run(cli: Cli) -> Result<i32> {
    if cli.version {
        println!("{}", version_line());
        return Ok(0);
    }
    let Some(cmd) = cli.cmd else {
        Cli::command().print_help().map_err(|e| Error::msg(e.to_string()))?;
        return Ok(2);
    };
    match cmd {
        Cmd::Build { force } => {
            let inp = Inputs::discover(util::out_dir())?;
            if !build::ensure(&inp, force)? {
                eprintln!("ferry: {} is up to date (use --force to rebuild)", inp.out.display());
            }
            Ok(0)
        }
        Cmd::Up(a) => up(a),
        Cmd::Accel => {
            let c = ferry_builder::accel::choice();
            println!("{}", c.kind.name());
            Ok(0)
        }
        Cmd::Logs { name, follow } => logs(&existing(&name)?, follow),
        Cmd::Ports { name } => {
            portfwd::run(Machine::named(&name)?)?;
            Ok(0)
        }
        Cmd::Switch { name } => {
            switch::run(&name)?;
            Ok(0)
        }
        Cmd::Network { cmd: NetworkCmd::Ls { format, quiet } } => {
            let nets = Network::all();
            if quiet {
                nets.iter().for_each(|n| println!("{}", n.name));
                return Ok(0);
            }
            match format {
                Format::Table => print!("{}", network::table(&nets)),
                Format::Json => nets.iter().for_each(|n| println!("{}", network::json_line(n))),
            }
            Ok(0)
        }
        Cmd::Network { cmd: NetworkCmd::Rm { name } } => {
            let left = network::remove(&name)?;
            if !left.is_empty() {
                eprintln!("ferry: {} left network {name} (stopped; they boot without it)", left.join(", "));
            }
            eprintln!("ferry: network {name} removed");
            Ok(0)
        }
        Cmd::Disk { cmd: DiskCmd::Create { path, size, format, ssh_key, tls } } => disk_create(&path, &size, &format, ssh_key, tls),
        Cmd::Env { name, shell, unset } => {
            let shell = match shell {
                ShellKind::Bash => Shell::Bash,
                ShellKind::Fish => Shell::Fish,
                ShellKind::Powershell => Shell::Powershell,
            };
            print!("{}", existing(&name)?.env_for(shell, unset)?);
            Ok(0)
        }
        Cmd::Ssh { name, cmd } => {
            let m = existing(&name)?;
            let st = m.ssh_command()?.args(cmd).status().map_err(|e| Error::msg(format!("run ssh: {e}")))?;
            Ok(st.code().unwrap_or(1))
        }
        Cmd::Stop { name } => stop(&existing(&name)?.name),
        Cmd::Rm { name, force, yes } => rm(&name, force, yes),
        Cmd::Ls { format, quiet } => {
            let machines = Machine::all();
            if quiet {
                machines.iter().for_each(|m| println!("{}", m.name));
                return Ok(0);
            }
            let rows: Vec<status::Row> = machines.iter().map(status::row).collect();
            match format {
                Format::Table => print!("{}", status::table(&rows)),
                Format::Json => rows.iter().for_each(|r| println!("{}", status::json_line(r))),
            }
            Ok(0)
        }
        Cmd::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(0)
        }
    }
}

/// The machine NAME, which must exist.
fn existing(name: &str) -> Result<Machine> {
    let m = Machine::named(name)?;
    if !m.exists() {
        let known: Vec<String> = Machine::all().into_iter().map(|m| m.name).collect();
        let hint =
            if known.is_empty() { "there are none; ferry up makes one".to_string() } else { format!("there are: {}", known.join(", ")) };
        return Err(Error::msg(format!("no machine named {name} ({hint})")));
    }
    Ok(m)
}

fn rm(name: &str, force: bool, yes: bool) -> Result<i32> {
    let m = existing(name)?;
    if m.pid().is_some() {
        if !force {
            return Err(Error::msg(format!("machine {name} is running; stop it first (ferry stop {name}), or ferry rm -f {name}")));
        }
        if let Some(pid) = m.pid() {
            // SAFETY: killing the QEMU process this machine's pid file names (we started it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            qemu::wait_exit(&m.path("qemu.pid"), Duration::from_secs(10));
        }
    }
    if !yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        let disk = std::fs::metadata(m.disk()).map(|d| format!(" and its data disk ({} GiB)", d.len() >> 30)).unwrap_or_default();
        eprint!("Remove machine {name}{disk}? Containers, images and volumes on it are lost. [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).map_err(|e| Error::msg(format!("read the answer: {e}")))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("ferry: {name} kept");
            return Ok(1);
        }
    }
    machine::remove(&m)?;
    if let Some(note) = context::remove(name) {
        eprintln!("ferry: {note}");
    }
    eprintln!("ferry: {name} removed");
    Ok(0)
}

fn logs(m: &Machine, follow: bool) -> Result<i32> {
    let console = m.path("console.log");
    if !follow {
        for f in ["console.log", "ports.log"] {
            match std::fs::read(m.path(f)) {
                Ok(b) => {
                    println!("==> {} <==", m.path(f).display());
                    print!("{}", String::from_utf8_lossy(&b));
                }
                Err(_) => println!("==> {}: none yet", m.path(f).display()),
            }
        }
        return Ok(0);
    }
    // -f: the console as it grows, until the machine stops (a new boot truncates the log: start over).
    use std::io::Write;
    let mut shown = 0usize;
    loop {
        let b = std::fs::read(&console).unwrap_or_default();
        if b.len() < shown {
            shown = 0;
        }
        std::io::stdout().write_all(&b[shown..]).map_err(|e| Error::msg(format!("write: {e}")))?;
        let _ = std::io::stdout().flush();
        shown = b.len();
        if m.pid().is_none() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `--share` values (relative to the user's directory) and `--no-share`; neither given keeps what the
/// machine has.
struct ShareArgs {
    specs: Vec<shares::HostShare>,
    none: bool,
}

fn disk_create(path: &str, size: &str, format: &str, ssh_key: Option<String>, tls: Option<String>) -> Result<i32> {
    let bytes = disk::parse_size(size)?;
    let format = disk::Format::parse(format)?;
    let ssh_pub = match ssh_key {
        Some(k) => {
            let data = std::fs::read(util::user_cwd().join(&k)).map_err(|e| Error::msg(format!("--ssh-key {k}: {e}")))?;
            if !String::from_utf8_lossy(&data).starts_with("ssh-") && !String::from_utf8_lossy(&data).starts_with("ecdsa-") {
                return Err(Error::msg(format!("--ssh-key {k}: not an OpenSSH public key (pass the .pub file)")));
            }
            Some(data)
        }
        None => None,
    };
    let tls = tls.map(|d| disk::Tls::from_dir(&util::user_cwd().join(d))).transpose()?;
    disk::create(&disk::Spec { path: util::user_cwd().join(path), bytes, format, ssh_pub, tls })?;
    eprintln!("ferry: wrote {path} ({} MiB, {})", bytes.div_ceil(1 << 20), format.qemu_name());
    Ok(0)
}

/// Grow an existing machine's raw data disk to `bytes` (sparse; the guest grows the partition and the
/// filesystem at the next boot). Shrinking would cut off data: refused.
fn grow_disk(m: &Machine, bytes: u64) -> Result<()> {
    let path = m.disk();
    let Ok(md) = std::fs::metadata(&path) else {
        return Err(Error::msg(format!("machine {} has no data disk (made with --no-disk); --disk-size cannot add one", m.name)));
    };
    if bytes < md.len() {
        return Err(Error::msg(format!(
            "--disk-size {} MiB is smaller than {}'s disk ({} MiB); a disk is never shrunk (its data would be cut off)",
            bytes >> 20,
            m.name,
            md.len() >> 20
        )));
    }
    if bytes > md.len() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| Error::msg(format!("grow {}: {e}", path.display())))?;
        eprintln!("ferry: {}'s data disk grows from {} to {} MiB (the filesystem follows at boot)", m.name, md.len() >> 20, bytes >> 20);
    }
    Ok(())
}

fn up(a: UpArgs) -> Result<i32> {
    let name = a.name.as_str();
    let m = Machine::named(name)?;
    let cwd = util::user_cwd();
    let share = ShareArgs { specs: a.share.iter().map(|s| shares::parse_spec(s, &cwd)).collect::<Result<_>>()?, none: a.no_share };
    let disk_bytes = if a.no_disk { None } else { Some(disk::parse_size(a.disk_size.as_deref().unwrap_or("20G"))?) };
    let memory = a.memory.as_deref().map(settings::parse_memory).transpose()?;
    let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let new = !m.exists();
    let running = m.pid().is_some();
    let current = Settings::load(&m.path("settings.json"))?;
    let hw = current.with(a.cpus, memory, host_cpus)?;
    let disk_now = std::fs::metadata(m.disk()).ok().map(|d| d.len());
    let disk_change = !new && a.disk_size.is_some() && disk_bytes.is_some() && disk_bytes != disk_now;
    for n in &a.network {
        network::check_name(n)?;
    }
    let on: Vec<String> = Network::of(name).into_iter().map(|n| n.name).collect();
    let net_change = (a.no_network && !on.is_empty()) || a.network.iter().any(|n| !on.contains(n));
    // Asking a running machine for what it already has is fine; a real change waits for the next boot.
    if running && (share.none || !share.specs.is_empty() || hw != current || disk_change || net_change) {
        return Err(Error::msg(format!(
            "machine {name} is running; --share/--no-share/--cpus/--memory/--disk-size/--network/--no-network change the next boot: ferry stop {name} first"
        )));
    }
    if !new && a.no_disk && disk_now.is_some() {
        return Err(Error::msg(format!("machine {name} has a data disk; --no-disk applies to new machines (ferry rm {name} first)")));
    }
    let total = Instant::now();
    let inp = Inputs::discover(util::out_dir())?;
    build::ensure(&inp, false)?;
    m.create(disk_bytes)?;
    if let (true, Some(b)) = (disk_change, disk_bytes) {
        grow_disk(&m, b)?;
    }
    hw.save(&m.path("settings.json"))?;
    let shared = resolve_shares(&m, new, share)?;
    if a.no_network {
        network::leave_all(name)?;
    } else {
        network::join(name, &a.network)?;
    }
    let nets = Network::of(name);
    network::ensure_switches(&nets)?;
    let ports = m.ports()?;
    let cfg = Arc::new(ping::client_config(&m.dir)?);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports.api));
    if m.pid().is_none() {
        let accel = qemu::accel();
        let step = util::Step::start(format!("boot {name} under QEMU ({accel}, {} CPU(s), {} MiB)", hw.cpus, hw.memory_mb));
        for s in &shared {
            util::say(&format!("    share {} -> {}{}", s.host.display(), s.guest, if s.read_only { " (read-only)" } else { "" }));
        }
        for n in &nets {
            util::say(&format!("    network {} ({}): {}", n.name, n.subnet(), n.addr(name).map(|a| a.to_string()).unwrap_or_default()));
        }
        m.launch(&inp.out, &format!("console=tty0 console=ttyS0,115200 quiet panic=-1 ferry.hostname={name}"))?.start()?;
        // A switch that found no member running while QEMU started has exited; it starts again here.
        network::ensure_switches(&nets)?;
        let _ = std::fs::write(m.path("accel"), format!("{accel}\n"));
        wait_ready(&m, addr, cfg.clone(), Duration::from_secs(600))?;
        step.done("engine answers /_ping over mTLS");
    } else if !ping::ping(addr, cfg) {
        return Err(Error::msg(format!("machine {name} runs but its API does not answer; see ferry logs {name}")));
    }
    portfwd::ensure(&m)?;
    eprintln!("ferry: {}", context::ensure(&m));
    eprintln!("ferry: {name} is up in {:.1}s", total.elapsed().as_secs_f64());
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
            util::say(&format!("    [{:>5.1}s] {l}", start.elapsed().as_secs_f64()));
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
    let step = util::Step::start(format!("stop {name}: ACPI power-down, containers get SIGTERM"));
    qemu::qmp(&m.path("qmp.sock"), "system_powerdown")?;
    if qemu::wait_exit(&m.path("qemu.pid"), Duration::from_secs(90)) {
        step.done("");
        eprintln!("ferry: {name} powered off in {:.1}s", t.elapsed().as_secs_f64());
        return Ok(0);
    }
    if let Some(pid) = m.pid() {
        // SAFETY: killing the QEMU process we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Err(Error::msg(format!("{name} did not power off within 90s; QEMU killed")))
}
