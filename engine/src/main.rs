//! `ferry-engine serve` (run by init) and `ferry-engine ctl start|stop|restart|status` (run by
//! /etc/init.d/docker).
use ferry_contract::paths;
use ferry_engine::control::{self, Command, Reply};
use ferry_engine::dockerd::{self, Dockerd};
use ferry_engine::owner::{self, Daemon};
use ferry_engine::{bench, daemon_config, frontdoor, material, profile};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TLS_DIR: &str = paths::TLS_DIR;
const CLIENT_DIR: &str = paths::CLIENT_TLS_DIR;
const BUILD_EPOCH: &str = paths::BUILD_EPOCH;
const PORT: u16 = 2376;
const PLAIN_PORT: u16 = 2375;

fn log(msg: &str) {
    println!("ferry-engine: {msg}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-engine: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match args.first().map(String::as_str) {
        Some("serve") => rt.block_on(serve()),
        Some("ctl") => match args.get(1).and_then(|c| Command::parse(c)) {
            Some(cmd) => rt.block_on(ctl(cmd)),
            None => usage(),
        },
        _ => usage(),
    };
    std::process::exit(code);
}

fn usage() -> i32 {
    eprintln!("usage: ferry-engine serve | ferry-engine ctl start|stop|restart|status");
    2
}

async fn ctl(cmd: Command) -> i32 {
    match control::request(Path::new(control::SOCKET), cmd).await {
        Ok(Reply { code, text }) => {
            println!("{text}");
            code
        }
        Err(e) => {
            eprintln!("docker: {e}");
            if cmd == Command::Status {
                3
            } else {
                1
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "ferry".into())
}

/// Every IPv4/IPv6 address on the machine's interfaces (for the generated server certificate).
fn addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            let ifname =
                if (*p).ifa_name.is_null() { String::new() } else { std::ffi::CStr::from_ptr((*p).ifa_name).to_string_lossy().to_string() };
            // Container bridges are dockerd's own, unreachable from outside; certificates need not follow them.
            let docker_made = ifname == "docker0" || ifname.starts_with("br-") || ifname.starts_with("veth");
            if !a.is_null() && !docker_made {
                match (*a).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    out
}

struct Engine {
    d: Dockerd,
    config: frontdoor::SharedConfig,
    /// Where the current TLS material came from ("generated ..." follows address changes).
    source: String,
    /// The plain-HTTP listener on 2375, only while the profile says DOCKER_TLS=no.
    plain: Option<tokio::task::JoinHandle<()>>,
}

fn paths() -> material::Paths {
    material::Paths { tls_dir: TLS_DIR.into(), client_dir: Some(CLIENT_DIR.into()), clock_checked: Some(paths::CLOCK_CHECKED.into()) }
}

/// Read the profile (docker-machine's settings) for the next dockerd start. Errors leave the defaults.
async fn read_profile() -> profile::Profile {
    match profile::load(Path::new(profile::PATH), profile::TIMEOUT).await {
        Ok(Some(p)) => {
            for n in &p.notes {
                log(&format!("profile: {n}"));
            }
            log(&format!("profile: {} dockerd flag(s), {} environment variable(s) from {}", p.args.len(), p.env.len(), profile::PATH));
            p
        }
        Ok(None) => profile::Profile { tls: true, ..Default::default() },
        Err(e) => {
            log(&format!("ERROR: profile: {e}; starting dockerd with the defaults"));
            profile::Profile { tls: true, ..Default::default() }
        }
    }
}

async fn resolve_material(p: &profile::Profile) -> ferry_engine::error::Result<material::Material> {
    let floor = std::fs::read_to_string(BUILD_EPOCH).ok().and_then(|s| s.trim().parse().ok());
    material::resolve(&paths(), p.tls_files.as_ref(), &hostname(), &addresses(), floor, &log)
}

/// TLS material for the first start: retried until it works (e.g. the clock is fixed), the front door
/// cannot open without it.
async fn first_material(p: &profile::Profile) -> material::Material {
    let mut clock_waits = 0u32;
    loop {
        match resolve_material(p).await {
            Ok(m) => return m,
            // Only time fixes this one: SNTP or a user setting the clock. Checked often, said once a minute.
            Err(e) if e.kind == ferry_engine::error::Kind::ClockBeforeBuild => {
                if clock_waits.is_multiple_of(30) {
                    log(&format!("ERROR: {e}; waiting for the clock to be set (SNTP, or `date -s` as root)"));
                }
                clock_waits = clock_waits.wrapping_add(1);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                log(&format!("ERROR: no usable TLS material: {e}; retrying in 10s"));
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

impl Engine {
    /// Apply the profile before a start: dockerd's flags and environment, the TLS material (swapped into
    /// the running front door), and the plain listener for an explicit DOCKER_TLS=no.
    async fn apply_profile(&mut self) {
        let p = read_profile().await;
        self.d.extra_args = p.args.clone();
        self.d.env = p.env.clone();
        // dockerd always reads the cleaned copy; if it cannot be written, dockerd fails to start rather than
        // read a file that may open a socket.
        let source = p.config_file.clone().unwrap_or_else(|| daemon_config::DEFAULT.into());
        match daemon_config::prepare(Path::new(&source), Path::new(daemon_config::CLEANED)) {
            Ok(prep) => {
                prep.notes.iter().for_each(|n| log(n));
                self.d.config_keys = prep.keys;
            }
            Err(e) => log(&format!("ERROR: {e}; dockerd cannot read its configuration")),
        }
        self.d.extra_args.extend(["--config-file".to_string(), daemon_config::CLEANED.to_string()]);
        if let Some(a) = bench::native_tls_args(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default(), Path::new(TLS_DIR)) {
            log(&format!("bench ({}): dockerd also serves the API with its own TLS on :{}", bench::OPTION, bench::PORT));
            self.d.extra_args.extend(a);
        }
        match resolve_material(&p).await {
            Ok(m) => {
                if m.source != self.source {
                    log(&format!("TLS material: {}", m.source));
                }
                self.source = m.source;
                match self.config.write() {
                    Ok(mut c) => *c = m.config,
                    Err(poisoned) => *poisoned.into_inner() = m.config,
                }
            }
            Err(e) => log(&format!("ERROR: TLS material: {e}; keeping the current certificates")),
        }
        if !p.tls && self.plain.is_none() {
            log(&format!("WARNING: DOCKER_TLS=no in the profile: the Docker API is served WITHOUT authentication on :{PLAIN_PORT}; anyone who can reach it controls this machine"));
            self.plain = Some(tokio::spawn(frontdoor::serve_plain(PLAIN_PORT, dockerd::SOCKET.into(), Arc::new(log))));
        } else if p.tls {
            if let Some(h) = self.plain.take() {
                h.abort();
                log(&format!("plain API on :{PLAIN_PORT} closed (the profile no longer says DOCKER_TLS=no)"));
            }
        }
    }

    /// Re-issue a generated server certificate when the machine's names changed.
    fn follow_addresses(&mut self) {
        if !self.source.starts_with("generated") {
            return;
        }
        match material::refresh_generated(&paths(), &hostname(), &addresses(), &log) {
            Ok(Some(c)) => match self.config.write() {
                Ok(mut cur) => *cur = Arc::new(c),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(c),
            },
            Ok(None) => {}
            Err(e) => log(&format!("ERROR: re-issue the server certificate: {e}")),
        }
    }
}

impl Daemon for Engine {
    async fn prepare(&mut self) {
        self.apply_profile().await;
        if let Some(note) = self.d.prepare_containerd().await {
            log(&note);
        }
    }
    fn spawn(&mut self) -> ferry_engine::error::Result<()> {
        self.d.start()
    }
    async fn ready(&mut self) -> bool {
        dockerd::ping(&self.d.socket).await
    }
    fn exited(&mut self) -> Option<String> {
        self.d.check_exit()
    }
    async fn stop(&mut self) -> ferry_engine::error::Result<bool> {
        self.d.stop().await
    }
    fn pid(&self) -> Option<u32> {
        self.d.pid()
    }
    fn failure_detail(&self) -> String {
        format!("{}:\n{}", self.d.log_file.display(), self.d.log_tail(6))
    }
    fn housekeeping(&mut self) {
        if let Some(note) = self.d.keep_containerd() {
            log(&note);
        }
        self.follow_addresses();
    }
}

async fn bind() -> tokio::net::TcpListener {
    loop {
        match frontdoor::listen(PORT) {
            Ok(l) => return l,
            Err(e) => {
                log(&format!("ERROR: listen on :{PORT}: {e}; retrying in 5s"));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

async fn control_server(owner: owner::Handle) {
    let path = Path::new(control::SOCKET);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
    let listener = match tokio::net::UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => return log(&format!("ERROR: control socket {}: {e}", path.display())),
    };
    loop {
        let Ok((s, _)) = listener.accept().await else { continue };
        let owner = owner.clone();
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match Command::parse(&line) {
                Some(cmd) => owner.send(cmd).await,
                None => Reply { code: 2, text: format!("unknown command {:?}; use start, stop, restart or status", line.trim()) },
            };
            let _ = w.write_all(control::format_reply(&reply).as_bytes()).await;
        });
    }
}

fn log_path() -> PathBuf {
    // Persistent when the data disk provides /var/lib/boot2docker/log, RAM otherwise.
    let persistent = Path::new(paths::PERSISTENT_LOG_DIR);
    if persistent.is_dir() {
        persistent.join("docker.log")
    } else {
        PathBuf::from(paths::DOCKER_LOG)
    }
}

async fn serve() -> i32 {
    // Profile and TLS material first (the front door needs them), then the front door, then dockerd.
    let p = read_profile().await;
    let m = first_material(&p).await;
    log(&format!("TLS material: {}", m.source));
    let config = frontdoor::SharedConfig::new(RwLock::new(m.config));
    let mut engine = Engine {
        d: Dockerd::new(dockerd::binary(), log_path(), dockerd::SOCKET.into()),
        config: config.clone(),
        source: m.source,
        plain: None,
    };
    if let Some(pid) = engine.d.adopt(Path::new(dockerd::PID_FILE)) {
        log(&format!("adopted dockerd (pid {pid}) left running by a previous engine manager; its containers keep running"));
    }
    let listener = bind().await;
    let on = listener.local_addr().map(|a| if a.is_ipv6() { "IPv6 and IPv4" } else { "IPv4 only" }).unwrap_or("?");
    log(&format!("front door listening on :{PORT}, {on} (TLS, client certificate required)"));
    tokio::spawn(frontdoor::serve(listener, config, dockerd::SOCKET.into(), Arc::new(log)));

    // One owner for dockerd (it starts it now); the control socket and SIGTERM send it commands.
    let (owner, handle) = owner::Owner::new(engine, log);
    tokio::spawn(control_server(handle.clone()));
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log(&format!("ERROR: SIGTERM handler: {e}"));
            return 1;
        }
    };
    tokio::spawn(async move {
        term.recv().await;
        handle.send(Command::Shutdown).await;
    });
    owner.run().await;
    0
}
