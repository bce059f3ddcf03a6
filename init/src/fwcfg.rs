//! Provisioning without a disk: QEMU's fw_cfg carries `opt/ferry/userdata.tar`, which the kernel's
//! qemu_fw_cfg driver exposes in sysfs.
use crate::error::{Error, Result};

use ferry_contract::paths;

/// Where the kernel shows the userdata item.
pub fn userdata_file() -> String {
    paths::fwcfg_file(paths::FWCFG_USERDATA)
}

pub fn read_fwcfg() -> Result<Option<Vec<u8>>> {
    let file = userdata_file();
    match std::fs::read(&file) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {file}"), e)),
    }
}
