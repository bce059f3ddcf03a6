//! The contract between Ferry's guest and its host CLI, in one place: the paths boot2docker users and
//! docker-machine rely on, the data disk's partition table, the userdata.tar format, the fw_cfg list of
//! shared folders, the names both sides check (hostnames, kernel modules), the one way files are
//! replaced and the one restart back-off. Pure code on bytes and strings (only `file` touches the filesystem): init, the engine and the
//! image builder all depend on it, and on nothing of each other's for these.
pub mod containerd;
pub mod error;
pub mod file;
pub mod glob;
pub mod gpt;
pub mod names;
pub mod paths;
pub mod restart;
pub mod shares;
pub mod userdata;

pub use error::{Error, Result};
