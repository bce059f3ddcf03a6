//! Entry point: applet by argv[0], otherwise PID 1 (stage A in the initramfs, stage B in the real root).
use ferry_init::cmdline::Cmdline;
use ferry_init::{applets, log, rescue, rootswitch, stage_b, sys};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let name = applets::applet_name(&argv0);
    if let Some(code) = applets::run(name, &args[1.min(args.len())..]) {
        std::process::exit(code);
    }
    if std::process::id() != 1 {
        eprintln!("init: this is Ferry's PID 1; run it as poweroff, reboot, halt, modprobe or sethostname");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| log::line(&format!("PANIC: {info}"))));
    let why = match std::panic::catch_unwind(|| if rootswitch::in_initramfs() { stage_a() } else { stage_b::run() }) {
        Ok(msg) => msg,
        Err(_) => "init panicked".to_string(),
    };
    rescue::shell_forever(&why)
}

/// Stage A: returns only on failure, with the reason.
fn stage_a() -> String {
    if let Err(e) = rootswitch::early_mounts() {
        return format!("early mounts: {e}");
    }
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if cmdline.bench_poweroff {
        log::line("bench: powering off right away");
        let _ = sys::reboot(sys::RebootCommand::PowerOff);
    }
    if let Err(e) = log::phase("early-modules", rootswitch::load_early_modules) {
        return format!("loading loop/squashfs/overlay: {e}");
    }
    if let Err(e) = log::phase("root", rootswitch::build_newroot) {
        return format!("building the root filesystem: {e}");
    }
    let e = rootswitch::switch_and_exec();
    format!("switching root: {e}")
}
