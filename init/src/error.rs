//! The crate's one error type: what failed, where (device, file, phase), and the OS error behind it.
use std::fmt;
use std::io;

#[derive(Debug)]
pub struct Error {
    pub context: String,
    pub source: Option<io::Error>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn msg(context: impl Into<String>) -> Self {
        Error { context: context.into(), source: None }
    }
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error { context: context.into(), source: Some(source) }
    }
    /// The OS error of the last failed libc call, with context.
    pub fn last_os(context: impl Into<String>) -> Self {
        Error::io(context, io::Error::last_os_error())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {}", self.context, e),
            None => write!(f, "{}", self.context),
        }
    }
}

impl std::error::Error for Error {}

/// Attach context to any io::Result.
pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

/// The shared formats' errors (GPT, userdata.tar) keep their message; callers that decide on the kind
/// match on `ferry_contract::Error` before converting.
impl From<ferry_contract::Error> for Error {
    fn from(e: ferry_contract::Error) -> Self {
        Error::msg(e.to_string())
    }
}
