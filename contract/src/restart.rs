//! How long Ferry's supervisors wait before starting again what died (init for its services, the engine
//! manager for dockerd): 1 s after the first failure, doubling to 30 s for one that keeps dying. What
//! counts as "keeps dying" is each supervisor's own (a service that ran 5 s, a dockerd that ran 60 s).
use std::time::Duration;

pub const MAX: Duration = Duration::from_secs(30);

/// The wait after `failures` consecutive failures (the first is 1).
pub fn delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_thirty() {
        assert_eq!([0, 1, 2, 3, 5, 6, 9, u32::MAX].map(|f| delay(f).as_secs()), [1, 1, 2, 4, 16, 30, 30, 30]);
    }
}
