//! One boot that runs from RAM (its two format-me disks are too small: one is refused, the other left
//! alone), then hostile boot2docker profiles on it, one docker restart each. Each profile: the console names
//! the problem, the engine manager stays small, and the API answers again with the machine's certificates.
//! The caller gets the running machine afterwards (the front door attacks run on it).
use crate::{add, blank, machine, root_sh, Shared, HOSTILE};
use ferry_builder::machine::Machine;
use ferry_builder::qemu::Drive;
use ferry_contract::userdata::{file, write, MAGIC};
use qemu_tests::*;
use std::path::Path;

pub const NAME: &str = "hostile-ram";
const PROFILE: &str = "/var/lib/boot2docker/profile";
/// The engine manager's peak resident memory after all profiles (3.4 MB measured after them).
const ENGINE_PEAK_KB: u64 = 64 * 1024;

/// A hostile profile: case name, profile text, console texts that must appear after the restart, and a
/// shell check (run as root in the VM) that must print "ok".
struct Hostile {
    name: &'static str,
    text: String,
    says: &'static [&'static str],
    check: &'static str,
}

fn profiles() -> Vec<Hostile> {
    let tls = "/var/lib/boot2docker/mismatch";
    vec![
        Hostile { name: "`exit 1`", text: "exit 1\n".into(), says: &["failed (exit status: 1)", "with the defaults"], check: "echo ok" },
        Hostile { name: "a syntax error", text: "if then fi (\n".into(), says: &["Syntax error", "with the defaults"], check: "echo ok" },
        Hostile {
            name: "an endless loop",
            text: "while :; do :; done\n".into(),
            says: &["did not finish within 10s", "with the defaults"],
            check: "echo ok",
        },
        Hostile {
            name: "endless output",
            text: "yes 'a profile that never stops talking'\n".into(),
            says: &["did not finish within 10s", "with the defaults"],
            check: "echo ok",
        },
        Hostile {
            name: "CACERT/SERVERCERT/SERVERKEY with a key that does not match its certificate",
            text: format!("CACERT={tls}/ca.pem\nSERVERCERT={tls}/server.pem\nSERVERKEY={tls}/server-key.pem\n"),
            says: &["does not match", "falling back"],
            check: "echo ok",
        },
        Hostile {
            name: "EXTRA_ARGS asking for a plain TCP socket (-H tcp://0.0.0.0:2375 --tlsverify=false)",
            text: "EXTRA_ARGS='-H tcp://0.0.0.0:2375 --tlsverify=false'\nDOCKER_HOST='-H tcp://0.0.0.0:2375'\n".into(),
            says: &["ignoring -H tcp://0.0.0.0:2375", "ignoring --tlsverify=false", "DOCKER_HOST: tcp://0.0.0.0:2375 ignored"],
            // Nothing listens on 2375 (listeners in /proc/net/tcp: state 0A; port 2375 is 0x0947).
            check: "grep -q ':0947 00000000:0000 0A' /proc/net/tcp /proc/net/tcp6 && echo 'listening on 2375' || echo ok",
        },
    ]
}

/// Root shell in the VM with `script` on stdin.
fn sh(home: &Path, script: &str) -> Result<String, String> {
    root_sh(home, NAME, script, 3 * MIN)
}

/// Shell that writes `text` to `path` (as root; quoted here-document, so nothing in it is expanded).
fn put(path: &str, text: &str) -> String {
    format!("cat > {path} <<'FERRY_EOF'\n{text}\nFERRY_EOF\n")
}

pub fn all(o: &Shared, home: &Path, then: impl FnOnce(&DockerEnv)) {
    let dir = home.join(NAME);
    let setup = (|| {
        let m = machine(home, NAME)?;
        m.create(None).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let key = std::fs::read(m.path("id_ed25519.pub")).map_err(|e| e.to_string())?;
        let (tiny, tinier) = (dir.join("tiny.img"), dir.join("tinier.img"));
        ferry_builder::disk::create(&ferry_builder::disk::Spec {
            path: tiny.clone(),
            bytes: 600 << 20,
            format: ferry_builder::disk::Format::Raw,
            ssh_pub: Some(key),
            tls: None,
        })
        .map_err(|e| e.to_string())?;
        // The magic entry alone.
        write_at(&blank(&tinier, 300)?, 0, &write(&[file(MAGIC, 0, MAGIC)]))?;
        let before = [sha256_file(&tiny), sha256_file(&tinier)];
        // The machine's userdata (keys and certificates) still comes through fw_cfg.
        let mut l =
            m.launch(&out_dir(), &format!("console=ttyS0,115200 quiet panic=-1 ferry.hostname={NAME}")).map_err(|e| e.to_string())?;
        l.disks = vec![Drive::new(tiny.clone(), "raw"), Drive::new(tinier.clone(), "raw")];
        l.start().map_err(|e| e.to_string())?;
        wait_console(&m, "engine ready", 12 * MIN)?;
        let env = m.env_lines().map_err(|e| e.to_string()).and_then(|e| DockerEnv::parse(&e).ok_or(format!("no exports in {e}")))?;
        Ok((m, env, [tiny, tinier], before))
    })();
    let (m, env, disks, before) = match setup {
        Ok(s) => s,
        Err(e) => {
            add(o, HOSTILE, "two small format-me disks: boot", Err(e));
            kill_qemu(&home.join("machines").join(NAME).join("qemu.pid"));
            return;
        }
    };
    let c = console(&m);
    add(
        o,
        HOSTILE,
        "a format-me disk too small for swap + data (600 MiB): named, the appliance runs from RAM",
        text_has(&c, &["Ferry needs at least", "running from RAM"]),
    );
    add(o, HOSTILE, "two format-me disks: the second (300 MiB) is named and left untouched", text_has(&c, &["also a format-me disk"]));
    profiles_on(o, home, &m, &env);
    then(&env);
    let _ = ferry(home, &["stop", NAME], 3 * MIN);
    kill_qemu(&m.path("qemu.pid"));
    add(
        o,
        HOSTILE,
        "both small format-me disks are byte-identical after the boot",
        (|| {
            for (p, b) in disks.iter().zip(before) {
                if b.is_none() || sha256_file(p) != b {
                    return Err(format!("{} changed", p.display()));
                }
            }
            Ok(String::new())
        })(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn profiles_on(o: &Shared, home: &Path, m: &Machine, env: &DockerEnv) {
    // Two valid certificates; the profile pairs the first one with the second one's key.
    let files = (|| {
        let now = time::OffsetDateTime::now_utc();
        let a = ferry_engine::certs::generate("localhost", &[], now).map_err(|e| e.to_string())?;
        let b = ferry_engine::certs::generate("localhost", &[], now).map_err(|e| e.to_string())?;
        let d = "/var/lib/boot2docker/mismatch";
        Ok::<String, String>(format!(
            "mkdir -p {d}\n{}{}{}",
            put(&format!("{d}/ca.pem"), &a.ca_cert),
            put(&format!("{d}/server.pem"), &a.server_cert),
            put(&format!("{d}/server-key.pem"), &b.server_key)
        ))
    })();
    for p in profiles() {
        let case = format!("hostile profile: {}: named, dockerd starts, the API answers with the machine's certificates", p.name);
        add(
            o,
            HOSTILE,
            &case,
            (|| {
                let mark = console(m).len();
                let t = std::time::Instant::now();
                let files = files.as_deref().map_err(|e| format!("test certificates: {e}"))?;
                // The restart's reply may be an error; what counts is the console and the API afterwards.
                let _ = sh(home, &format!("{files}{}/etc/init.d/docker restart\n", put(PROFILE, &p.text)))?;
                retry(3 * MIN, || text_has(console(m).get(mark..).unwrap_or(""), p.says))?;
                retry(3 * MIN, || contains(env.run(&["version", "--format", "{{.Server.Version}}"], None, MIN), "26."))?;
                contains(sh(home, p.check), "ok")?;
                let said = console(m)
                    .get(mark..)
                    .unwrap_or("")
                    .lines()
                    .find(|l| l.contains(p.says[0]))
                    .map(|l| l.trim().chars().take(120).collect::<String>())
                    .unwrap_or_default();
                Ok(format!("API back {:.0}s after the restart began; console: {said:?}", t.elapsed().as_secs_f64()))
            })(),
        );
    }
    add(
        o,
        HOSTILE,
        "hostile profiles: the engine manager's peak memory stays bounded",
        (|| {
            let _ = sh(home, &format!("rm -f {PROFILE}; /etc/init.d/docker restart\n"));
            let out = sh(home, "grep VmHWM /proc/$(engine)/status")?;
            let kb: u64 = out.split_whitespace().nth(1).and_then(|v| v.parse().ok()).ok_or(format!("no VmHWM in {out:?}"))?;
            if kb > ENGINE_PEAK_KB {
                Err(format!("VmHWM {kb} kB"))
            } else {
                Ok(format!("VmHWM {kb} kB"))
            }
        })(),
    );
}
