//! Several machines, end to end under QEMU: `ferry up NAME --network lab` on two machines (three with
//! FERRY_SWARM_NODES=3, the full run), fixed addresses on the shared network, then Docker Swarm across
//! them: init and join, both nodes Ready, an overlay network reached by service name from the other
//! machine, the routing mesh answering on every machine's address (also on one that runs no replica), the
//! Swarm ports not forwarded to the host, the worker's `ferry stop`/`ferry up` (it rejoins and the service
//! comes back to it), `ferry network ls/rm`, and the switch exiting when the last machine stops. Images
//! are imported from a tarball on every machine (no registry). Prints the overlay's throughput between two
//! machines next to two containers on one machine (figures, not asserted).
use ferry_builder::machine::Machine;
use qemu_tests::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NET: &str = "lab";
const IMAGE: &str = "ferry-busybox:test";
const MANAGER: &str = "mgr";
/// The web service: every replica serves its node's hostname (`{{.Node.Hostname}}` as the task's hostname).
const WEB_CMD: &str = "mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 80 -h /www";
/// Transfer size for the throughput figures (MiB); TCG moves a few MB/s, so this stays short.
const BLOB_MIB: u32 = 32;

struct Node {
    name: String,
    addr: String,
    env: DockerEnv,
}

fn machine(name: &str) -> Machine {
    Machine::named(name).expect("a valid machine name")
}

/// `ferry up` of every name at once (each boot is one QEMU; the suite's VM slots bound how many run).
fn up_all(home: &Path, names: &[&str], extra: &[&str]) -> Vec<Result<String, String>> {
    let threads: Vec<_> = names
        .iter()
        .map(|n| {
            let (home, mut args) = (home.to_path_buf(), vec!["up".to_string(), n.to_string()]);
            args.extend(extra.iter().map(|s| s.to_string()));
            std::thread::spawn(move || ferry(&home, &args.iter().map(String::as_str).collect::<Vec<_>>(), 12 * MIN))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect()
}

/// The member addresses `ferry network ls --format json` gives for NET.
fn addresses(home: &Path) -> Result<Vec<(String, String)>, String> {
    let o = ferry(home, &["network", "ls", "--format", "json"], MIN)?;
    let line = o.lines().find(|l| l.contains(&format!("\"name\":\"{NET}\""))).ok_or(format!("no {NET} in: {o}"))?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    let members = v["members"].as_array().ok_or("no members")?;
    Ok(members.iter().filter_map(|m| Some((m["machine"].as_str()?.to_string(), m["address"].as_str()?.to_string()))).collect())
}

/// Wget `url` from a container on `network` of `node`; the body.
fn fetch(node: &Node, network: &str, url: &str) -> Result<String, String> {
    // Not wget's -T: Debian's busybox 1.35 wget crashes (SIGSEGV) whenever -T is given.
    node.env.run(&["run", "--rm", "--network", network, IMAGE, "busybox", "timeout", "20", "busybox", "wget", "-qO-", url], None, 3 * MIN)
}

/// Seconds a container on `network` of `node` takes to download `url` to /dev/null.
fn timed_fetch(node: &Node, network: &str, url: &str) -> Result<f64, String> {
    // The guest's uptime before and after (busybox's date has no %N); 10 ms resolution is plenty here.
    let script = format!(
        "read s _ < /proc/uptime; busybox timeout 120 busybox wget -qO /dev/null {url} || exit 1; read e _ < /proc/uptime; echo $s $e"
    );
    let o = node.env.run(&["run", "--rm", "--network", network, IMAGE, "busybox", "sh", "-c", &script], None, 5 * MIN)?;
    let t: Vec<f64> = o.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    match t.as_slice() {
        [s, e] if e > s => Ok(e - s),
        _ => Err(format!("not two uptimes: {o}")),
    }
}

fn node_states(mgr: &Node) -> Result<String, String> {
    mgr.env.run(&["node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.Availability}}"], None, MIN)
}

/// Ok when every name is listed Ready by the manager (retried for `limit`).
fn all_ready(mgr: &Node, names: &[&str], limit: Duration) -> Result<String, String> {
    retry(limit, || {
        let o = node_states(mgr)?;
        let missing: Vec<&&str> = names.iter().filter(|n| !o.lines().any(|l| l.starts_with(&format!("{n} Ready")))).collect();
        if missing.is_empty() {
            Ok(String::new())
        } else {
            Err(format!("not Ready: {missing:?}; node ls:\n{o}"))
        }
    })
}

fn main() {
    isolate_guests();
    let cases = Cases::from_args("swarm", &["refusals", "swarm-across-machines"]);
    let mut r = Report::default();
    let count: usize = std::env::var("FERRY_SWARM_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(2).clamp(2, 3);
    println!("swarm: {count} machines on shared network {NET}, ferry = {}", ferry_bin().display());
    let base = std::env::temp_dir().join(format!("ferry-swarm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let home = base.join("home");
    let _guard = KillGuard { home: home.clone() };
    // Machine::named (console, QMP socket, ports) looks where the suite's ferry runs put the machines.
    std::env::set_var("FERRY_HOME", &home);
    let names: Vec<&str> = [MANAGER, "wk1", "wk2"].into_iter().take(count).collect();
    let workers: Vec<&str> = names[1..].to_vec();

    cases.run("refusals", || refusals(&mut r, &home));
    cases.run("swarm-across-machines", || swarm(&mut r, &home, &names, &workers));
    let _ = std::fs::remove_dir_all(&base);
    cases.finish(r);
}

/// Refusals that boot nothing.
fn refusals(r: &mut Report, home: &Path) {
    r.check("--network with a bad name: a clear error, nothing created", {
        match ferry(home, &["up", "nosuch", "--network", "lab/2"], MIN) {
            Ok(o) => Err(format!("succeeded: {o}")),
            Err(e) if e.contains("network name") && !home.join("machines/nosuch").exists() => Ok(String::new()),
            Err(e) => Err(e),
        }
    });
    r.check("ferry network rm of an unknown network says which exist", {
        match ferry(home, &["network", "rm", "nosuch"], MIN) {
            Ok(o) => Err(format!("succeeded: {o}")),
            Err(e) if e.contains("no network named nosuch") => Ok(String::new()),
            Err(e) => Err(e),
        }
    });
}

/// Every machine on the shared network: Swarm init and join, an overlay and the routing mesh, figures,
/// a worker's restart and rejoin, then `ferry network rm`.
fn swarm(r: &mut Report, home: &Path, names: &[&str], workers: &[&str]) {
    // Boot every machine on the shared network at once.
    let t = Instant::now();
    let ups = up_all(home, names, &["--network", NET]);
    let mut failed = false;
    for (n, u) in names.iter().zip(&ups) {
        failed |= !r.check(&format!("ferry up {n} --network {NET}"), u.clone().map(|_| String::new()));
    }
    if failed {
        for n in names {
            println!("--- console of {n}:\n{}", ferry_builder::machine::console_tail(&machine(n), 40));
        }
        std::mem::take(r).finish("swarm");
    }
    println!("    ({} machines up in {:.0}s)", names.len(), t.elapsed().as_secs_f64());

    let addrs = match addresses(home) {
        Ok(a) => a,
        Err(e) => {
            r.check("ferry network ls --format json lists every machine with an address", Err(e));
            std::mem::take(r).finish("swarm");
        }
    };
    r.check(
        "ferry network ls: one subnet, a distinct fixed address per machine",
        (|| {
            let got: Vec<&str> = addrs.iter().map(|(m, _)| m.as_str()).collect();
            if got != names {
                return Err(format!("members {got:?}, want {names:?}"));
            }
            let mut a: Vec<&str> = addrs.iter().map(|(_, a)| a.as_str()).collect();
            a.dedup();
            if a.len() != names.len() || !a.iter().all(|x| x.starts_with("192.168.100.")) {
                return Err(format!("addresses {a:?}"));
            }
            let table = ferry(home, &["network", "ls"], MIN)?;
            text_has(&table, &[NET, "192.168.100.0/24", &format!("{MANAGER}={}", addrs[0].1)]).map_err(|e| format!("{e}: {table}"))
        })(),
    );
    let mut nodes: Vec<Node> = vec![];
    for (n, u) in names.iter().zip(&ups) {
        let addr = addrs.iter().find(|(m, _)| m == n).map(|(_, a)| a.clone()).unwrap_or_default();
        nodes.push(Node { name: n.to_string(), addr, env: u.as_deref().ok().and_then(DockerEnv::parse).unwrap_or_default() });
    }
    let ssh = |n: &str, cmd: &str| ferry(home, &["ssh", n, "--", cmd], 2 * MIN);

    for n in &nodes {
        r.check(
            &format!("{}: eth1 holds its fixed address {}/24; eth0 still has the user network", n.name, n.addr),
            (|| {
                contains(ssh(&n.name, "ip -4 addr show eth1"), &format!("inet {}/24", n.addr))?;
                contains(ssh(&n.name, "ip -4 addr show eth0"), "10.0.2.15")
            })(),
        );
    }
    // The image, from a tarball, on every machine.
    let tar = busybox_rootfs_tar();
    for n in &nodes {
        r.check(
            &format!("{}: docker import of a busybox tarball", n.name),
            tar.clone().and_then(|t| n.env.run(&["import", "-", IMAGE], Some(&t), 5 * MIN)).map(|_| String::new()),
        );
    }
    r.check(
        "every machine reaches every other one over the shared network (ping)",
        (|| {
            for a in &nodes {
                for b in nodes.iter().filter(|b| b.name != a.name) {
                    a.env
                        .run(&["run", "--rm", "--network", "host", IMAGE, "busybox", "ping", "-c", "1", "-W", "5", &b.addr], None, 2 * MIN)
                        .map_err(|e| format!("{} -> {}: {e}", a.name, b.name))?;
                }
            }
            Ok(String::new())
        })(),
    );

    // Swarm: init on the manager with its shared-network address, join from the workers.
    let mgr = &nodes[0];
    let init = mgr.env.run(&["swarm", "init", "--advertise-addr", &mgr.addr], None, 3 * MIN);
    r.check(&format!("docker swarm init --advertise-addr {} on {MANAGER}", mgr.addr), init.map(|_| String::new()));
    let token = mgr.env.run(&["swarm", "join-token", "-q", "worker"], None, MIN).map(|t| t.trim().to_string());
    for w in &nodes[1..] {
        r.check(
            &format!("docker swarm join on {} with the manager's {}:2377", w.name, mgr.addr),
            token
                .clone()
                .and_then(|t| w.env.run(&["swarm", "join", "--token", &t, &format!("{}:2377", mgr.addr)], None, 3 * MIN))
                .map(|_| String::new()),
        );
    }
    r.check(&format!("docker node ls: {} nodes Ready", names.len()), all_ready(mgr, names, 2 * MIN));

    // An overlay network and a service on the workers only, published through the routing mesh.
    r.check(
        "docker network create -d overlay --attachable ov",
        mgr.env.run(&["network", "create", "-d", "overlay", "--attachable", "ov"], None, 2 * MIN).map(|_| String::new()),
    );
    let replicas = workers.len().to_string();
    r.check(
        "docker service create web: on the workers, --publish 8080:80, image from the local store",
        mgr.env
            .run(
                &[
                    "service",
                    "create",
                    "--detach",
                    "--name",
                    "web",
                    "--network",
                    "ov",
                    "--publish",
                    "published=8080,target=80",
                    "--replicas",
                    &replicas,
                    "--replicas-max-per-node",
                    "1",
                    "--constraint",
                    "node.role==worker",
                    "--hostname",
                    "{{.Node.Hostname}}",
                    "--no-resolve-image",
                    IMAGE,
                    "busybox",
                    "sh",
                    "-c",
                    WEB_CMD,
                ],
                None,
                2 * MIN,
            )
            .map(|_| String::new()),
    );
    let running_on = |want: &[&str], limit: Duration| {
        retry(limit, || {
            let o = mgr.env.run(
                &["service", "ps", "web", "--filter", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}"],
                None,
                MIN,
            )?;
            let missing: Vec<&&str> = want.iter().filter(|n| !o.lines().any(|l| l.starts_with(&format!("{n} Running")))).collect();
            if missing.is_empty() {
                Ok(String::new())
            } else {
                Err(format!("no running task on {missing:?}: {o}"))
            }
        })
    };
    r.check("web runs on every worker", running_on(workers, 4 * MIN));
    r.check(
        &format!("a container on {MANAGER} reaches web on a worker by service name over the overlay"),
        retry(2 * MIN, || {
            let o = fetch(mgr, "ov", "http://web/")?;
            if workers.iter().any(|w| o.trim() == *w) {
                Ok(format!("answered by {}", o.trim()))
            } else {
                Err(format!("answer: {o}"))
            }
        }),
    );
    let mesh_everywhere = |limit: Duration| {
        retry(limit, || {
            let mut seen = vec![];
            for from in [&nodes[0], &nodes[1]] {
                for to in &nodes {
                    let o = fetch(from, "host", &format!("http://{}:8080/", to.addr))
                        .map_err(|e| format!("{} -> {}: {e}", from.name, to.addr))?;
                    if !workers.contains(&o.trim()) {
                        return Err(format!("{} -> {}: answer {o:?}", from.name, to.addr));
                    }
                    seen.push(format!("{}->{}:{}", from.name, to.name, o.trim()));
                }
            }
            Ok(seen.join(" "))
        })
    };
    r.check(
        &format!("the routing mesh answers on every machine's {NET} address, {MANAGER}'s too (no replica there)"),
        mesh_everywhere(2 * MIN),
    );
    r.check(
        "the Swarm ports are open on the shared network, and none is forwarded to the host",
        (|| {
            // 2377 (0x0949) and 7946 (0x1F0A) listen in the manager...
            let tcp = ssh(MANAGER, "cat /proc/net/tcp /proc/net/tcp6")?;
            for (port, hex) in [(2377, ":0949 "), (7946, ":1F0A ")] {
                if !tcp.lines().any(|l| l.contains(hex) && l.split_whitespace().nth(3) == Some("0A")) {
                    return Err(format!("nothing listens on {port} in {MANAGER}"));
                }
            }
            // ...and QEMU forwards only the API, ssh and containers' published ports (none here).
            let m = machine(MANAGER);
            let usernet = ferry_builder::qemu::hmp(&m.path("qmp.sock"), "info usernet").map_err(|e| e.to_string())?;
            let p = m.ports().map_err(|e| e.to_string())?;
            let forwarded: Vec<&str> = usernet.lines().filter(|l| l.contains("HOST_FORWARD")).collect();
            for l in &forwarded {
                let guest_port = l.split_whitespace().nth(5).unwrap_or("");
                if !["2376", "22"].contains(&guest_port) {
                    return Err(format!("unexpected forward: {l}"));
                }
            }
            if forwarded.len() != 2 {
                return Err(format!("forwards: {forwarded:?}"));
            }
            for port in [2377u16, 7946, 4789] {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && port != p.api && port != p.ssh {
                    return Err(format!("something answers on the host's 127.0.0.1:{port}"));
                }
            }
            Ok(String::new())
        })(),
    );
    r.check(
        "the kernel loaded what Swarm needs on demand: vxlan, ip_vs, br_netfilter",
        (|| {
            let m = ssh(MANAGER, "cat /proc/modules")?;
            let missing: Vec<&str> =
                ["vxlan", "ip_vs", "br_netfilter"].into_iter().filter(|x| !m.lines().any(|l| l.starts_with(&format!("{x} ")))).collect();
            if missing.is_empty() {
                Ok(String::new())
            } else {
                Err(format!("not loaded: {missing:?}"))
            }
        })(),
    );

    // Figures: the same download over the overlay between two machines, over an encrypted overlay (IPsec
    // ESP between the machines) and between two containers on one machine. The encrypted one also shows
    // that ESP and XFRM are in the image.
    r.check(
        "docker network create -d overlay --opt encrypted --attachable sec",
        mgr.env
            .run(&["network", "create", "-d", "overlay", "--opt", "encrypted", "--attachable", "sec"], None, 2 * MIN)
            .map(|_| String::new()),
    );
    let blob_cmd = format!("mkdir -p /www && busybox dd if=/dev/zero of=/www/blob bs=1048576 count={BLOB_MIB} 2>/dev/null && exec busybox httpd -f -p 80 -h /www");
    let worker = &nodes[1];
    let blob = worker
        .env
        .run(&["run", "-d", "--name", "blob", "--network", "ov", IMAGE, "busybox", "sh", "-c", &blob_cmd], None, 2 * MIN)
        .and_then(|_| worker.env.run(&["network", "connect", "sec", "blob"], None, 2 * MIN));
    r.check(&format!("a {BLOB_MIB} MiB file served on both overlays from {}", worker.name), blob.map(|_| String::new()));
    // The same file from the worker's own network stack on port 8099: the shared network without an overlay.
    let raw_cmd = format!("mkdir -p /www && busybox dd if=/dev/zero of=/www/blob bs=1048576 count={BLOB_MIB} 2>/dev/null && exec busybox httpd -f -p 8099 -h /www");
    let raw =
        worker.env.run(&["run", "-d", "--name", "rawblob", "--network", "host", IMAGE, "busybox", "sh", "-c", &raw_cmd], None, 2 * MIN);
    let raw_url = format!("http://{}:8099/blob", worker.addr);
    let wire = raw.and_then(|_| retry(MIN, || timed_fetch(mgr, "host", &raw_url)));
    let url = "http://blob/blob";
    let remote = retry(MIN, || timed_fetch(mgr, "ov", url));
    let secure = retry(MIN, || timed_fetch(mgr, "sec", url));
    let local = timed_fetch(worker, "ov", url);
    r.check(
        "the encrypted overlay carries the download between machines",
        secure.clone().map(|t| format!("{:.1} MiB/s", f64::from(BLOB_MIB) / t)),
    );
    match (remote, secure, local) {
        (Ok(remote), secure, Ok(local)) => {
            let mibs = |t: f64| f64::from(BLOB_MIB) / t;
            let fig = |r: Result<f64, String>| r.map(|t| format!("{:.1} MiB/s ({t:.2} s)", mibs(t))).unwrap_or_else(|_| "failed".into());
            println!(
                "figure: {BLOB_MIB} MiB over HTTP: overlay between two machines {:.1} MiB/s ({remote:.2} s), encrypted overlay between two machines {}, shared network without overlay {}, overlay between two containers on one machine {:.1} MiB/s ({local:.2} s); between machines / on one machine {:.2}",
                mibs(remote),
                fig(secure),
                fig(wire),
                mibs(local),
                local / remote
            );
            r.check(
                "the overlay carries the download between machines and on one machine",
                Ok(format!("{:.1} vs {:.1} MiB/s", mibs(remote), mibs(local))),
            );
        }
        (a, _, b) => {
            r.check("the overlay carries the download between machines and on one machine", Err(format!("{:?} / {:?}", a.err(), b.err())));
        }
    }
    let _ = worker.env.run(&["rm", "-f", "blob", "rawblob"], None, MIN);

    // The worker goes away and comes back: same address, it rejoins, web runs on it again.
    let w = &nodes[1];
    r.check(&format!("ferry stop {} (a worker with web's task)", w.name), ferry(home, &["stop", &w.name], 3 * MIN).map(|_| String::new()));
    r.check(
        &format!("the manager sees {} Down", w.name),
        retry(2 * MIN, || {
            let o = node_states(mgr)?;
            if o.lines().any(|l| l.starts_with(&format!("{} Down", w.name))) {
                Ok(String::new())
            } else {
                Err(o)
            }
        }),
    );
    let again = up_all(home, &[w.name.as_str()], &[]);
    r.check(&format!("ferry up {} again (no --network: remembered)", w.name), again[0].clone().map(|_| String::new()));
    r.check(
        &format!("{} has the same address on {NET} after the restart", w.name),
        contains(ssh(&w.name, "ip -4 addr show eth1"), &format!("inet {}/24", w.addr)),
    );
    r.check(&format!("{} rejoined: every node Ready", w.name), all_ready(mgr, names, 3 * MIN));
    r.check(&format!("web is rescheduled on {}", w.name), running_on(&[w.name.as_str()], 4 * MIN));
    r.check("the routing mesh answers on every address again", mesh_everywhere(3 * MIN));

    // Networks: rm refused while machines run on it; the switch ends with the last machine; rm then works.
    r.check(&format!("ferry network rm {NET} is refused while machines run on it"), {
        match ferry(home, &["network", "rm", NET], MIN) {
            Ok(o) => Err(format!("succeeded: {o}")),
            Err(e) if e.contains("in use by") && e.contains(MANAGER) && home.join("networks").join(NET).exists() => Ok(String::new()),
            Err(e) => Err(e),
        }
    });
    let stops: Vec<_> = names
        .iter()
        .map(|n| {
            let (home, n) = (home.to_path_buf(), n.to_string());
            std::thread::spawn(move || ferry(&home, &["stop", &n], 3 * MIN))
        })
        .collect();
    let stopped: Result<Vec<String>, String> =
        stops.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("thread panicked".into()))).collect();
    r.check("ferry stop of every machine", stopped.map(|_| String::new()));
    let switch_pid = std::fs::read_to_string(home.join("networks").join(NET).join("switch.pid")).unwrap_or_default();
    r.check(
        "the network's switch exits once no machine on it runs",
        retry(MIN, || {
            let pid = switch_pid.trim();
            if pid.is_empty() || !PathBuf::from(format!("/proc/{pid}")).exists() {
                Ok(String::new())
            } else {
                Err(format!("switch {pid} still runs"))
            }
        }),
    );
    let last = *names.last().unwrap_or(&MANAGER);
    r.check(
        &format!("ferry rm {last} takes it off {NET}"),
        (|| {
            ferry(home, &["rm", "-y", last], MIN)?;
            let members = addresses(home)?;
            if members.iter().any(|(m, _)| m == last) || members.len() != names.len() - 1 {
                return Err(format!("members: {members:?}"));
            }
            Ok(String::new())
        })(),
    );
    r.check(
        &format!("ferry network rm {NET} once they are stopped; ls no longer lists it"),
        (|| {
            let e = ferry(home, &["network", "rm", NET], MIN)?;
            let ls = ferry(home, &["network", "ls", "-q"], MIN)?;
            if ls.lines().any(|l| l == NET) || home.join("networks").join(NET).exists() {
                return Err(format!("still there: {ls}"));
            }
            Ok(e.lines().last().unwrap_or("").to_string())
        })(),
    );
}
