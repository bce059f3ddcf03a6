//! The one place PID 1 collects exited children with `waitpid(-1)`. Every exit it collects goes to the
//! owner of that pid: the supervisor for its services (`Supervisor::reap`), nobody for orphans the kernel
//! re-parented to PID 1. Collecting anywhere else would lose an exit its owner waits for, and the
//! supervisor would keep a dead pid it might later signal after the kernel reused it.
//! (A caller that waits for one pid of its own, such as bootsync.sh's, may still `waitpid(pid)`: that
//! takes nobody else's exit.)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// The raw wait status (see `services::describe`).
    pub status: i32,
}

/// What `collect` saw: the exits, and whether PID 1 has no children left at all.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub exits: Vec<Exit>,
    pub no_children: bool,
}

/// Every child that has exited so far, without blocking.
pub fn collect() -> Collected {
    let mut c = Collected::default();
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => c.exits.push(Exit { pid: pid.as_raw_nonzero().get(), status: status.as_raw() }),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                c.no_children = e == rustix::io::Errno::CHILD;
                return c;
            }
            Ok(None) => return c,
        }
    }
}
