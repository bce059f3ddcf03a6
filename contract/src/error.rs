//! The crate's one error type. Its kinds are the decisions callers make: a disk with no GPT is examined
//! otherwise, a damaged one is never written over; a malformed userdata.tar is reported as such, one that
//! holds something refused says what to remove.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No GPT here: no "EFI PART" signature, or fewer bytes than a table takes.
    NoGpt(String),
    /// A GPT whose header or entry array is damaged or not in the layout we write: never write over it.
    DamagedGpt(String),
    /// A table that cannot be written as asked (too many partitions, overlaps, a disk too small).
    Layout(String),
    /// userdata.tar is not a well-formed archive (checksum, truncation, a bad field, no end marker).
    MalformedUserdata(String),
    /// userdata.tar holds an entry that is never unpacked (links, devices, unsafe paths, oversize).
    RefusedUserdata(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoGpt(m) | Error::DamagedGpt(m) | Error::Layout(m) => write!(f, "GPT: {m}"),
            Error::MalformedUserdata(m) | Error::RefusedUserdata(m) => write!(f, "userdata.tar: {m}"),
        }
    }
}

impl std::error::Error for Error {}
