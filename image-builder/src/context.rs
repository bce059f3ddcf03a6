//! The docker CLI context for a machine (colima's naming: `ferry` for the default machine, `ferry-NAME`
//! for the others), so `docker --context ferry ...` works with no environment variables. Made with the
//! docker CLI itself (`docker context create|update|rm`), which owns the format of its context store.
use crate::machine::Machine;
use std::process::Command;

pub fn name(machine: &str) -> String {
    if machine == "default" {
        "ferry".into()
    } else {
        format!("ferry-{machine}")
    }
}

/// The `--docker` endpoint description: the machine's API with its client certificates.
pub fn endpoint(api: u16, cert_dir: &std::path::Path) -> String {
    let f = |n: &str| cert_dir.join(n).display().to_string();
    format!("host=tcp://127.0.0.1:{api},ca={},cert={},key={}", f("ca.pem"), f("cert.pem"), f("key.pem"))
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker CLI: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Create or update the machine's context. Returns a line for the user; a missing docker CLI is said,
/// not fatal (the exports still work).
pub fn ensure(m: &Machine) -> String {
    let Ok(p) = m.ports() else { return format!("no docker context for {} (no ports yet)", m.name) };
    let (ctx, ep) = (name(&m.name), endpoint(p.api, &m.dir));
    let desc = format!("Ferry machine {}", m.name);
    let exists = docker(&["context", "inspect", &ctx]).is_ok();
    let r = if exists {
        docker(&["context", "update", &ctx, "--description", &desc, "--docker", &ep])
    } else {
        docker(&["context", "create", &ctx, "--description", &desc, "--docker", &ep])
    };
    match r {
        Ok(_) => format!("docker context {ctx}: docker --context {ctx} ..., or docker context use {ctx}"),
        Err(e) => format!("no docker context {ctx}: {e}"),
    }
}

/// Remove the machine's context, if the docker CLI has one. Returns a line for the user, if any.
pub fn remove(machine: &str) -> Option<String> {
    let ctx = name(machine);
    docker(&["context", "inspect", &ctx]).ok()?;
    // A context in use cannot be removed without --force; the user asked for the machine to go.
    Some(match docker(&["context", "rm", "--force", &ctx]) {
        Ok(_) => format!("docker context {ctx} removed"),
        Err(e) => format!("docker context {ctx} not removed: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_colima() {
        assert_eq!(name("default"), "ferry");
        assert_eq!(name("web"), "ferry-web");
        let ep = endpoint(2376, std::path::Path::new("/m"));
        assert_eq!(ep, "host=tcp://127.0.0.1:2376,ca=/m/ca.pem,cert=/m/cert.pem,key=/m/key.pem");
    }
}
