//! Provisioning without a disk: QEMU's fw_cfg carries `opt/ferry/userdata.tar`, which the kernel's
//! qemu_fw_cfg driver exposes in sysfs.
use crate::error::{Error, Result};

pub const FWCFG_USERDATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/ferry/userdata.tar/raw";

pub fn read_fwcfg() -> Result<Option<Vec<u8>>> {
    match std::fs::read(FWCFG_USERDATA) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {FWCFG_USERDATA}"), e)),
    }
}
