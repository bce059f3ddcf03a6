//! Ferry's image builder and host CLI: rootfs assembly, initramfs, kernel checks, and the QEMU machine
//! runner behind `ferry up`.
pub mod accel;
pub mod assets;
pub mod build;
pub mod context;
pub mod cpio;
pub mod debian;
pub mod disk;
pub mod elf;
pub mod error;
pub mod kconfig;
pub mod machine;
pub mod media;
pub mod modinfo;
pub mod modules;
pub mod network;
pub mod ping;
pub mod portfwd;
pub mod qemu;
pub mod rootfs;
pub mod settings;
pub mod shares;
pub mod status;
pub mod switch;
pub mod util;
