//! Ferry's PID 1 and its small helper applets. Library so the builder can share formats (userdata.tar,
//! modules.dep/alias) and tests can exercise the pure parts without booting.
pub mod applets;
pub mod blockdev;
pub mod clock;
pub mod cmdline;
pub mod coldplug;
pub mod dhcp;
pub mod disk;
pub mod error;
pub mod fwcfg;
pub mod glob;
pub mod gpt;
pub mod kmod;
pub mod log;
pub mod loopdev;
pub mod mounts;
pub mod net;
pub mod powerbutton;
pub mod provision;
pub mod rescue;
pub mod rootswitch;
pub mod services;
pub mod shutdown;
pub mod stage_b;
pub mod sys;
pub mod userdata;
