//! Power cuts (QEMU killed with SIGKILL) at random instants: during the first boot of a fresh format-me
//! disk, and while a container writes and fsyncs files to a volume. The next boot must come up with the
//! data disk mounted and every acknowledged file intact; host e2fsck -fn must find the filesystem clean.
use crate::{acpi_stop, add, busybox_image, e2fsck, machine, ssh, up, Rng, Shared, CUT_FIRST, CUT_LOAD};
use qemu_tests::*;
use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cut lands between 1 s after QEMU starts and the window's end: the last measured boot (lane A's
/// first `ferry up`, then the one after each cut; it includes launching QEMU and polling /_ping), or 75 s
/// before any. Boots take 30-75 s under TCG, by host load; a fixed end put a third of one
/// run's cuts after engine ready (cut there instead), a fixed shorter one would miss slow boots' late
/// phases. 1.15 times the measured boot still put 3 of 10 there.
const FIRST_BOOT_START: f64 = 1.0;
const FIRST_BOOT_END: f64 = 75.0;

/// The last boot phase the console shows (where the cut landed).
fn last_phase(c: &str) -> String {
    c.lines()
        .rev()
        .find(|l| l.starts_with("ferry"))
        .map(|l| l.trim().chars().take(70).collect())
        .unwrap_or_else(|| "kernel (no init line yet)".into())
}

/// The first-boot cuts, shared by both lanes: each lane takes the next cut when its own cases are done,
/// so the long full run ends when the work does, not when one lane's list does. Cut i's instant comes
/// from its own generator (seed and i), so a seed replays the same point of the window whichever lane
/// takes it (the window's end follows the measured boots).
pub struct FirstBootCuts {
    n: usize,
    seed: u64,
    next: AtomicUsize,
    survived: AtomicUsize,
    window_end: Mutex<f64>,
}

impl FirstBootCuts {
    pub fn new(n: usize, seed: u64) -> FirstBootCuts {
        FirstBootCuts { n, seed, next: AtomicUsize::new(0), survived: AtomicUsize::new(0), window_end: Mutex::new(FIRST_BOOT_END) }
    }

    /// Take and run cuts until none are left.
    pub fn work(&self, o: &Shared, home: &Path) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            if i >= self.n {
                return;
            }
            let mut rng = Rng::new(self.seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1));
            let end = *self.window_end.lock().unwrap_or_else(|p| p.into_inner());
            let at = FIRST_BOOT_START + rng.range(0.0, 1.0) * (end - FIRST_BOOT_START);
            let name = format!("cut{i}");
            let res = self.cut(home, &name, at);
            if add(o, CUT_FIRST, &format!("run {}/{} (window {FIRST_BOOT_START:.0}-{end:.0} s)", i + 1, self.n), res) {
                self.survived.fetch_add(1, Ordering::SeqCst);
            }
            kill_qemu(&home.join("machines").join(&name).join("qemu.pid"));
            let _ = std::fs::remove_file(home.join("machines").join(&name).join("disk.img"));
        }
    }

    /// A boot to a running engine took `secs` (`ferry up`): the next cut's window ends there.
    pub fn measured_boot(&self, secs: f64) {
        *self.window_end.lock().unwrap_or_else(|p| p.into_inner()) = secs.clamp(10.0, 150.0);
    }

    /// The summary row, once both lanes are done.
    pub fn report(&self, o: &Shared) {
        let (survived, n) = (self.survived.load(Ordering::SeqCst), self.n);
        add(o, CUT_FIRST, "survived", if survived == n { Ok(format!("{survived}/{n}")) } else { Err(format!("{survived}/{n}")) });
    }

    /// One cut: a fresh format-me disk, QEMU killed `at` seconds after it starts (or at engine ready);
    /// the next boot's length sets the next cut's window.
    fn cut(&self, home: &Path, name: &str, at: f64) -> Result<String, String> {
        let m = machine(home, name)?;
        m.create(Some(4 << 30)).map_err(|e| e.to_string())?;
        let l = m.launch(&out_dir(), &format!("console=ttyS0,115200 quiet panic=-1 ferry.hostname={name}")).map_err(|e| e.to_string())?;
        l.start().map_err(|e| e.to_string())?;
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < at && !console(&m).contains("engine ready") {
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_qemu(&m.path("qemu.pid"));
        let c = console(&m);
        let cut = format!(
            "cut at {:.1}s, {}",
            t.elapsed().as_secs_f64(),
            if c.contains("engine ready") { "after engine ready".into() } else { format!("during {:?}", last_phase(&c)) }
        );
        let t = Instant::now();
        up(home, name).map_err(|e| format!("{cut}; next boot: {e}"))?;
        self.measured_boot(t.elapsed().as_secs_f64());
        let key = std::fs::read_to_string(m.path("id_ed25519.pub")).map_err(|e| e.to_string())?;
        let got =
            ssh(home, name, "grep ' /mnt/vda1 ext4 ' /proc/mounts && sudo e2label /dev/vda1 && cat /home/docker/.ssh/authorized_keys")
                .map_err(|e| format!("{cut}; {e}"))?;
        if !got.contains("boot2docker-data") || !got.contains(key.trim()) {
            return Err(format!("{cut}; after the next boot: {}", got.trim()));
        }
        acpi_stop(home, &m).map_err(|e| format!("{cut}; stop: {e}"))?;
        let fsck = e2fsck(&m).map_err(|e| format!("{cut}; {e}"))?;
        Ok(format!("{cut}; next boot: data mounted, keys in place; e2fsck: {fsck}"))
    }
}

/// The writer: file i holds a known line; written to a temporary name, fsynced, renamed, the directory
/// fsynced, then "ack i" is printed. Acks reach the host through `docker run`'s attached output.
fn writer_script(run: usize) -> String {
    format!(
        "i=0; while :; do i=$((i+1)); f=/d/r{run}-$i; printf 'run {run} file %d %01000d\\n' $i $i > $f.tmp && busybox sync $f.tmp && busybox mv $f.tmp $f && busybox sync /d && echo ack $i; done"
    )
}

fn verify_script(run: usize, acked: usize) -> String {
    format!(
        "bad=0; i=1; while [ $i -le {acked} ]; do [ \"$(busybox cat /d/r{run}-$i 2>/dev/null)\" = \"$(printf 'run {run} file %d %01000d' $i $i)\" ] || {{ echo bad $i; bad=$((bad+1)); }}; i=$((i+1)); done; echo checked {acked} bad $bad"
    )
}

/// Cut the power while the writer runs; returns (acknowledged files, seconds of writing before the cut).
fn write_and_cut(env: &DockerEnv, m: &ferry_builder::machine::Machine, run: usize, rng: &mut Rng) -> Result<(usize, f64), String> {
    busybox_image(env)?;
    let mut child = env
        .docker()
        .args(["run", "--name", &format!("writer{run}"), "-v", "load:/d", "ferry-busybox:test", "busybox", "sh", "-c", &writer_script(run)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("docker run: {e}"))?;
    let acked = Arc::new(AtomicUsize::new(0));
    let reader = {
        let acked = acked.clone();
        let out = child.stdout.take().ok_or("no stdout")?;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.trim().parse::<usize>().ok()) {
                    acked.fetch_max(n, Ordering::SeqCst);
                }
            }
        })
    };
    let t = Instant::now();
    while acked.load(Ordering::SeqCst) < 5 {
        if t.elapsed() > 4 * MIN {
            let _ = child.kill();
            return Err("the writer acknowledged fewer than 5 files in 4 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let writing = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(rng.range(0.0, 10.0)));
    kill_qemu(&m.path("qemu.pid"));
    let secs = writing.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    Ok((acked.load(Ordering::SeqCst), secs))
}

/// Expects "rel" running (after the shutdown cases); leaves it stopped.
pub fn under_load(o: &Shared, home: &Path, n: usize, rng: &mut Rng) {
    let m = match machine(home, "rel") {
        Ok(m) => m,
        Err(e) => {
            add(o, CUT_LOAD, "machine", Err(e));
            return;
        }
    };
    let mut env = match up(home, "rel") {
        Ok(e) => e,
        Err(e) => {
            add(o, CUT_LOAD, "boot", Err(e));
            return;
        }
    };
    let mut survived = 0;
    for run in 1..=n {
        let res = (|| {
            let (acked, secs) = write_and_cut(&env, &m, run, rng)?;
            let cut = format!("cut after {secs:.1}s of writing, {acked} files acknowledged");
            env = up(home, "rel").map_err(|e| format!("{cut}; next boot: {e}"))?;
            let v = env.run(
                &["run", "--rm", "-v", "load:/d", "ferry-busybox:test", "busybox", "sh", "-c", &verify_script(run, acked)],
                None,
                5 * MIN,
            )?;
            if !v.contains(&format!("checked {acked} bad 0")) {
                return Err(format!("{cut}; lost or damaged: {}", v.trim()));
            }
            acpi_stop(home, &m).map_err(|e| format!("{cut}; stop: {e}"))?;
            let fsck = e2fsck(&m).map_err(|e| format!("{cut}; {e}"))?;
            if run < n {
                env = up(home, "rel").map_err(|e| format!("{cut}; boot for the next run: {e}"))?;
            }
            Ok(format!("{cut}; next boot: dockerd up, all {acked} intact; e2fsck: {fsck}"))
        })();
        if add(o, CUT_LOAD, &format!("run {run}/{n}"), res) {
            survived += 1;
        } else if m.pid().is_none() {
            match up(home, "rel") {
                Ok(e) => env = e,
                Err(_) => break,
            }
        }
    }
    add(o, CUT_LOAD, "survived", if survived == n { Ok(format!("{survived}/{n}")) } else { Err(format!("{survived}/{n}")) });
    kill_qemu(&m.path("qemu.pid"));
}
