//! The mount tables, as data. Stage A mounts EARLY in the initramfs; stage B completes the set after the
//! root switch (proc, sys and dev are moved across, not remounted).
use crate::error::Result;
use crate::sys::{self, MountFlags};

pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV).union(MountFlags::NOEXEC);

pub const EARLY: &[MountSpec] = &[
    MountSpec { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: "" },
    MountSpec { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: "" },
    MountSpec { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MountFlags::NOSUID, data: "mode=0755" },
];

/// Stage A mounts it on the new root already, so the layers it moves under `/run/ferry` stay visible;
/// stage B's table then finds it mounted and passes over it.
pub const RUN: MountSpec =
    MountSpec { source: "run", target: "/run", fstype: "tmpfs", flags: MountFlags::NOSUID.union(MountFlags::NODEV), data: "mode=0755" };

pub const STAGE_B: &[MountSpec] = &[
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    MountSpec { source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: MountFlags::NOSUID.union(MountFlags::NODEV), data: "mode=1777" },
    MountSpec { source: "mqueue", target: "/dev/mqueue", fstype: "mqueue", flags: NOSUID_NODEV_NOEXEC, data: "" },
    RUN,
    MountSpec { source: "tmp", target: "/tmp", fstype: "tmpfs", flags: MountFlags::NOSUID.union(MountFlags::NODEV), data: "mode=1777" },
    MountSpec { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: NOSUID_NODEV_NOEXEC, data: "nsdelegate" },
    MountSpec { source: "securityfs", target: "/sys/kernel/security", fstype: "securityfs", flags: NOSUID_NODEV_NOEXEC, data: "" },
];

/// Without a data disk everything lives in RAM. The root is an overlay, and overlayfs cannot be the upper
/// layer of another overlay (dockerd's overlay2), so the engine's state gets its own tmpfs.
pub const RAM_DATA: &[MountSpec] = &[
    MountSpec { source: "docker-ram", target: "/var/lib/docker", fstype: "tmpfs", flags: MountFlags::empty(), data: "mode=0710" },
    MountSpec { source: "containerd-ram", target: "/var/lib/containerd", fstype: "tmpfs", flags: MountFlags::empty(), data: "mode=0711" },
];

/// Mount every entry that is not mounted yet. The first failure stops the phase (an appliance without /run
/// or cgroups is not one we can start the engine on).
pub fn mount_all(table: &[MountSpec]) -> Result<()> {
    for m in table {
        if sys::is_mountpoint(m.target) {
            continue;
        }
        sys::mkdir_p(m.target, 0o755)?;
        sys::mount(m.source, m.target, m.fstype, m.flags, m.data)?;
    }
    Ok(())
}
