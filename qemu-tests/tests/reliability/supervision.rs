//! Supervision: dockerd, sshd and the engine manager are killed inside the VM; each comes back with
//! back-off, the console says so, the API recovers, and PID 1's memory stays flat over many restarts.
use crate::{add, busybox_image, machine, root_sh, Shared, SUPERVISION};
use qemu_tests::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// A root script on "rel" (through ssh; the session outlives a killed sshd listener).
fn script(home: &Path, body: &str, timeout: Duration) -> Result<String, String> {
    root_sh(home, "rel", body, timeout)
}

fn api_back(env: &DockerEnv, since: Instant) -> Result<f64, String> {
    retry(5 * MIN, || contains(env.run(&["version", "--format", "{{.Server.Version}}"], None, MIN), "26."))?;
    Ok(since.elapsed().as_secs_f64())
}

/// Console lines (after byte `from`) that say a service exited and when it restarts.
fn exits_since(c: &str, from: usize, what: &str) -> Vec<String> {
    c.get(from..).unwrap_or("").lines().filter(|l| l.contains(what) && l.contains("restarting in")).map(|l| l.trim().to_string()).collect()
}

pub fn kill_and_recover(o: &Shared, home: &Path, env: &DockerEnv, restarts: usize) {
    let m = match machine(home, "rel") {
        Ok(m) => m,
        Err(e) => {
            add(o, SUPERVISION, "machine", Err(e));
            return;
        }
    };
    add(
        o,
        SUPERVISION,
        "dockerd killed (SIGKILL): the engine manager restarts it with back-off, the API recovers",
        (|| {
            let mark = console(&m).len();
            let t = Instant::now();
            script(home, "kill -9 $(cat /var/run/docker.pid)", 2 * MIN)?;
            let back = api_back(env, t)?;
            let lines = exits_since(&console(&m), mark, "dockerd exited");
            let line = lines.first().ok_or("the console does not say that dockerd exited")?;
            Ok(format!("API back after {back:.0}s; console: {line:?}"))
        })(),
    );

    let survivor = (|| {
        busybox_image(env)?;
        env.run(&["run", "-d", "--name", "survivor", "ferry-busybox:test", "busybox", "sleep", "100000"], None, 3 * MIN)?;
        env.run(&["inspect", "-f", "{{.State.StartedAt}}", "survivor"], None, MIN).map(|s| s.trim().to_string())
    })();
    let still_running = |what: &str| -> Result<(), String> {
        let was = survivor.clone().map_err(|e| format!("no container to watch: {e}"))?;
        let now = env.run(&["inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", "survivor"], None, MIN)?;
        if now.trim() == format!("true {was}") {
            Ok(())
        } else {
            Err(format!("the container did not survive {what}: {}", now.trim()))
        }
    };
    add(
        o,
        SUPERVISION,
        "engine manager killed: init restarts it, it adopts the running dockerd, containers keep running",
        (|| {
            let mark = console(&m).len();
            let t = Instant::now();
            script(home, "kill -9 $(engine)", 2 * MIN)?;
            let back = api_back(env, t)?;
            let c = console(&m);
            let line = exits_since(&c, mark, "service engine exited")
                .into_iter()
                .next()
                .ok_or("the console does not say that the engine manager exited")?;
            if !c[mark..].contains("adopted dockerd") {
                return Err("the new engine manager did not adopt dockerd".into());
            }
            still_running("the engine manager's restart")?;
            Ok(format!("API back after {back:.1}s; console: {line:?}"))
        })(),
    );
    add(
        o,
        SUPERVISION,
        "sshd killed: init restarts it, ssh works again",
        (|| {
            let mark = console(&m).len();
            let t = Instant::now();
            script(home, "kill -9 $(sshd)", 2 * MIN)?;
            retry(3 * MIN, || ferry(home, &["ssh", "rel", "--", "echo back"], MIN))?;
            let line = exits_since(&console(&m), mark, "service sshd exited")
                .into_iter()
                .next()
                .ok_or("the console does not say that sshd exited")?;
            Ok(format!("ssh back after {:.1}s; console: {line:?}", t.elapsed().as_secs_f64()))
        })(),
    );
    add(
        o,
        SUPERVISION,
        "sshd killed twice in a row: the second restart waits longer (back-off)",
        (|| {
            let mark = console(&m).len();
            script(home, "old=$(sshd); kill -9 $old; new=$(wait_new sshd $old) && kill -9 $new", 3 * MIN)?;
            retry(3 * MIN, || ferry(home, &["ssh", "rel", "--", "echo back"], MIN))?;
            let lines = exits_since(&console(&m), mark, "service sshd exited");
            let delays: Vec<&str> = lines.iter().filter_map(|l| l.rsplit("restarting in ").next()).collect();
            match delays.as_slice() {
                [a, b, ..] if a != b => Ok(format!("delays {a} then {b}")),
                _ => Err(format!("expected two growing delays, console: {lines:?}")),
            }
        })(),
    );
    add(
        o,
        SUPERVISION,
        &format!("{restarts} restarts (engine manager and sshd in turn): all come back, init's memory stays flat"),
        (|| {
            let mark = console(&m).len();
            // Each service runs at least 7 s before it is killed again, so every restart is a 1 s one.
            let body = format!(
                r#"echo "rss0 $(rss)"; se=0; ss=0; i=0
while [ $i -lt {restarts} ]; do
  i=$((i+1))
  if [ $((i % 2)) -eq 1 ]; then g=engine; last=$se; else g=sshd; last=$ss; fi
  now=$(date +%s); [ $((now - last)) -lt 7 ] && sleep $((7 - now + last))
  old=$($g); [ -n "$old" ] || {{ echo "no $g before restart $i"; exit 1; }}
  kill -9 $old
  wait_new $g $old >/dev/null || {{ echo "$g not back after restart $i"; exit 1; }}
  if [ $g = engine ]; then se=$(date +%s); else ss=$(date +%s); fi
  [ $i -eq 10 ] && echo "rss10 $(rss)"
done
echo "rssN $(rss)""#
            );
            let out = script(home, &body, Duration::from_secs((restarts as u64 * 10 + 300).max(600)))?;
            let get = |k: &str| out.lines().find_map(|l| l.strip_prefix(&format!("{k} "))).and_then(|v| v.trim().parse::<i64>().ok());
            let (r0, r10, rn) = (
                get("rss0").ok_or(format!("no rss0 in {out}"))?,
                get("rss10").unwrap_or(0),
                get("rssN").ok_or(format!("no rssN in {out}"))?,
            );
            let base = if restarts > 10 { r10 } else { r0 };
            let c = console(&m);
            let logged = exits_since(&c, mark, "service engine exited").len() + exits_since(&c, mark, "service sshd exited").len();
            if logged < restarts {
                return Err(format!("the console names {logged} exits for {restarts} restarts"));
            }
            let back = api_back(env, Instant::now())?;
            still_running("the restarts")?;
            let detail =
                format!("init VmRSS {r0} kB before, {r10} kB after 10, {rn} kB after {restarts}; API answered {back:.1}s after the last");
            // A leak of even 1 kB per restart shows over 90 restarts; page-granular noise stays well below.
            if rn - base > 256 {
                Err(format!("init grew by {} kB: {detail}", rn - base))
            } else {
                Ok(detail)
            }
        })(),
    );
    let _ = env.run(&["rm", "-f", "survivor"], None, 2 * MIN);
}
