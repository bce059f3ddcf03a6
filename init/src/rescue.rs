//! Last resort: a shell on the console. PID 1 keeps respawning it; it never exits itself.
use crate::log;

pub fn shell_forever(why: &str) -> ! {
    log::line(&format!("FATAL: {why}"));
    log::line("dropping to a rescue shell on the console (exit to get a new one)");
    loop {
        let sh = ["/bin/sh", "/bin/busybox"].into_iter().find(|p| std::path::Path::new(p).exists());
        match sh {
            Some(sh) => {
                let mut cmd = std::process::Command::new(sh);
                if sh.ends_with("busybox") {
                    cmd.arg("sh");
                }
                crate::sys::unblock_signals_in_child(&mut cmd);
                match cmd.spawn() {
                    Ok(child) => {
                        let pid = child.id() as libc::pid_t;
                        // Reap everything (nothing else runs: no supervisor) until the shell itself exits.
                        loop {
                            let c = crate::reaper::collect();
                            if c.no_children || c.exits.iter().any(|e| e.pid == pid) {
                                break;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                    Err(e) => {
                        log::line(&format!("cannot start {sh}: {e}"));
                        std::thread::sleep(std::time::Duration::from_secs(10));
                    }
                }
            }
            None => {
                log::line("no shell available; idling");
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }
    }
}
