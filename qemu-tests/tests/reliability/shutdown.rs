//! Graceful shutdown with containers running: `sudo poweroff` over ssh, then ACPI power-down through QMP.
//! Containers must get SIGTERM and exit 0, the machine must be off within 30 s, and the next boot must find
//! the data filesystem clean (no journal recovery; host e2fsck -fn clean).
use crate::{acpi_stop, add, busybox_image, e2fsck, machine, ssh, up, wait_off, Shared, SHUTDOWN};
use qemu_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

const TRAPPERS: [&str; 2] = ["trap1", "trap2"];
const LIMIT: Duration = Duration::from_secs(30);

/// Two containers that log "sigterm" to a volume when they get SIGTERM and then exit 0.
fn start_trappers(env: &DockerEnv) -> Result<(), String> {
    busybox_image(env)?;
    for n in TRAPPERS {
        if env.run(&["start", n], None, 2 * MIN).is_ok() {
            continue;
        }
        let body = format!(
            "trap 'echo sigterm >> /d/{n}; busybox sync /d/{n}; exit 0' TERM; echo started >> /d/{n}; while :; do busybox sleep 1; done"
        );
        env.run(&["run", "-d", "--name", n, "-v", "term:/d", "ferry-busybox:test", "busybox", "sh", "-c", &body], None, 3 * MIN)?;
    }
    // The trap is set once the shell runs; give it a moment under TCG.
    retry(MIN, || {
        contains(
            env.run(&["run", "--rm", "-v", "term:/d", "ferry-busybox:test", "busybox", "cat", "/d/trap1", "/d/trap2"], None, MIN),
            "started",
        )
    })?;
    Ok(())
}

/// After a shutdown: the data filesystem mounted without recovery; both containers got SIGTERM `round`
/// times in all and exited 0.
fn check_after(o: &Shared, home: &Path, env: &DockerEnv, how: &str, round: usize, boot: Duration) {
    add(
        o,
        SHUTDOWN,
        &format!("after {how}: the data filesystem mounts clean (no journal recovery)"),
        (|| {
            let d = ssh(home, "rel", "sudo dmesg | grep 'EXT4-fs (vda1)'")?;
            if d.contains("recover") || d.contains("orphan") || d.contains("error") {
                return Err(format!("kernel: {}", d.trim()));
            }
            let mounted = d.lines().last().unwrap_or("").split("]").last().unwrap_or("").trim().to_string();
            Ok(format!("boot to engine ready {:.0}s; {mounted}", boot.as_secs_f64()))
        })(),
    );
    add(
        o,
        SHUTDOWN,
        &format!("after {how}: both containers got SIGTERM and exited 0"),
        (|| {
            let logs =
                env.run(&["run", "--rm", "-v", "term:/d", "ferry-busybox:test", "busybox", "cat", "/d/trap1", "/d/trap2"], None, 2 * MIN)?;
            let n = logs.matches("sigterm").count();
            let codes = env.run(&["inspect", "-f", "{{.State.ExitCode}}", TRAPPERS[0], TRAPPERS[1]], None, MIN)?;
            if n != 2 * round || codes.split_whitespace().any(|c| c != "0") {
                return Err(format!(
                    "{n} SIGTERMs logged (want {}), exit codes {}",
                    2 * round,
                    codes.split_whitespace().collect::<Vec<_>>().join(",")
                ));
            }
            Ok(format!("{n} SIGTERMs logged so far, exit codes 0"))
        })(),
    );
}

fn within(took: Duration) -> Result<String, String> {
    if took <= LIMIT {
        Ok(format!("{:.1}s", took.as_secs_f64()))
    } else {
        Err(format!("took {:.1}s", took.as_secs_f64()))
    }
}

/// Returns true when the machine is up again (third boot) for the power cuts under load.
pub fn poweroff_and_acpi(o: &Shared, home: &Path, env: &DockerEnv) -> bool {
    let m = match machine(home, "rel") {
        Ok(m) => m,
        Err(e) => {
            add(o, SHUTDOWN, "machine", Err(e));
            return false;
        }
    };
    let poweroff = (|| {
        start_trappers(env)?;
        let t = Instant::now();
        // The ssh session ends with the machine; its exit status says nothing.
        let _ = ssh(home, "rel", "sudo poweroff");
        within(wait_off(&m, t, 3 * MIN)?)
    })();
    if !add(o, SHUTDOWN, "`sudo poweroff` over ssh with two containers running: off within 30 s", poweroff) {
        kill_qemu(&m.path("qemu.pid"));
    }
    let t = Instant::now();
    let env = match up(home, "rel") {
        Ok(e) => e,
        Err(e) => return add(o, SHUTDOWN, "second boot after poweroff", Err(e)),
    };
    check_after(o, home, &env, "`sudo poweroff`", 1, t.elapsed());
    let acpi = start_trappers(&env).and_then(|_| acpi_stop(home, &m)).and_then(within);
    if !add(o, SHUTDOWN, "ACPI power-down (QMP system_powerdown) with two containers running: off within 30 s", acpi) {
        kill_qemu(&m.path("qemu.pid"));
    }
    add(o, SHUTDOWN, "after ACPI power-down: host e2fsck -fn finds the data filesystem clean", e2fsck(&m));
    let t = Instant::now();
    let env = match up(home, "rel") {
        Ok(e) => e,
        Err(e) => return add(o, SHUTDOWN, "third boot after ACPI power-down", Err(e)),
    };
    check_after(o, home, &env, "ACPI power-down", 2, t.elapsed());
    true
}
