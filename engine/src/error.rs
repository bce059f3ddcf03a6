//! The engine crate's one error type: what was being done (file, socket, phase) and why it failed.
use std::fmt;

#[derive(Debug)]
pub struct Error {
    /// The kind, where a caller acts on it.
    pub kind: Kind,
    pub context: String,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The kinds of failure a caller treats differently; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Other,
    /// A TLS file is missing or cannot be read.
    TlsUnreadable,
    /// A TLS file is there but unusable: not PEM, no certificate or key in it, a CA rustls refuses.
    TlsUnusable,
    /// The private key does not belong to the certificate.
    TlsKeyMismatch,
    /// The clock is before the image was built: a certificate made now would not be valid yet. Waiting
    /// helps (SNTP or the RTC will set it); nothing else does.
    ClockBeforeBuild,
    /// The profile ran and failed (exit status, too much exported, exited early).
    ProfileFailed,
    /// The profile did not finish in time and was killed.
    ProfileTimeout,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn msg(context: impl Into<String>) -> Self {
        Error { kind: Kind::Other, context: context.into(), source: None }
    }
    pub fn with(context: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error { kind: Kind::Other, context: context.into(), source: Some(Box::new(e)) }
    }
    /// A failure of a kind callers act on.
    pub fn of(kind: Kind, context: impl Into<String>) -> Self {
        Error { kind, context: context.into(), source: None }
    }
    /// The same error, classified.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {}", self.context, e),
            None => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for Error {}

pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
    /// As `ctx`, of a kind callers act on.
    fn ctx_as(self, kind: Kind, context: impl FnOnce() -> String) -> Result<T>
    where
        Self: Sized,
    {
        self.ctx(context).map_err(|e| e.kind(kind))
    }
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::with(context(), e))
    }
}
