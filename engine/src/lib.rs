//! Ferry's engine manager: resolves TLS material, runs the mTLS front door on 2376 that splices to
//! dockerd's unix socket, supervises dockerd, and serves `/etc/init.d/docker` through a control socket.
pub mod bench;
pub mod certs;
pub mod containerd;
pub mod control;
pub mod daemon_config;
pub mod dockerd;
pub mod error;
pub mod frontdoor;
pub mod material;
pub mod owner;
pub mod profile;
pub mod readahead;
