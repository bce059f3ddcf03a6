//! The ACPI power button arrives as KEY_POWER on an input device, not as a signal: watch every
//! /dev/input/event* and turn a press into the power-off signal to PID 1.
use crate::applets::SIG_POWEROFF;
use std::collections::HashMap;
use std::os::fd::AsRawFd;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

pub fn watch_thread() {
    let mut devices: HashMap<String, std::fs::File> = HashMap::new();
    loop {
        if let Ok(entries) = std::fs::read_dir("/dev/input") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("event") && !devices.contains_key(&name) {
                    if let Ok(f) = std::fs::File::open(e.path()) {
                        devices.insert(name, f);
                    }
                }
            }
        }
        let mut fds: Vec<libc::pollfd> =
            devices.values().map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        // SAFETY: fds points to a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 2000) };
        if n <= 0 {
            if fds.is_empty() {
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            continue;
        }
        for p in fds.iter().filter(|p| p.revents & libc::POLLIN != 0) {
            let mut buf = [0u8; 24 * 16];
            // SAFETY: buf is valid for its length.
            let r = unsafe { libc::read(p.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if r <= 0 {
                continue;
            }
            // struct input_event on x86_64: timeval (16 bytes), type u16, code u16, value i32.
            for ev in buf[..r as usize].chunks_exact(24) {
                let ty = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
                if ty == EV_KEY && code == KEY_POWER && value == 1 {
                    crate::log::line("power button pressed");
                    // SAFETY: signalling ourselves (PID 1).
                    unsafe { libc::kill(1, SIG_POWEROFF) };
                }
            }
        }
        // Devices that went away report POLLERR/POLLHUP/POLLNVAL; drop them so they can be reopened.
        let bad: Vec<i32> =
            fds.iter().filter(|p| p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0).map(|p| p.fd).collect();
        devices.retain(|_, f| !bad.contains(&f.as_raw_fd()));
    }
}
