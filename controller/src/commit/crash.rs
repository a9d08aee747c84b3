//! Crash injection for the intent log's durability tests: a committer can be told to stop
//! mid-commit, as if the process died there, so the tests can check that recovery rolls the
//! change forward (or drops it) whole.
//!
//! Only test builds carry it: with neither `cfg(test)` nor the `testing` feature,
//! [`CrashHook`] is an empty type whose check always passes (its error type is
//! `Infallible`), so release binaries hold no crash point and no branch for one. The tests
//! under `controller/tests` enable the feature through the crate's own dev-dependency.
//! It imports nothing of the committer: the committer turns a crash into its error.

/// How far an intent commit got; a crash point stops it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Every chunk is written, the intent is not committed yet.
    ChunksWritten,
    /// The intent is committed and this many batches of it are applied.
    BatchesApplied(usize),
}

#[cfg(any(test, feature = "testing"))]
pub use self::injected::CrashPoint;
pub(super) use self::injected::{CrashHook, Crashed};

#[cfg(any(test, feature = "testing"))]
mod injected {
    use super::Stage;

    /// What a stopped commit fails with: where it stopped.
    pub type Crashed = CrashPoint;

    /// Where a test makes an intent commit stop, as if the process died there.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CrashPoint {
        /// Chunks written, intent not committed: the change must vanish.
        AfterChunks,
        /// Intent committed, nothing applied: the change must be rolled forward.
        AfterDecide,
        /// Intent committed, this many batches applied: the change must be rolled forward.
        AfterBatches(usize),
    }

    /// The crash point a committer stops at, if any.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CrashHook(Option<CrashPoint>);

    impl CrashHook {
        /// No crash: the commit runs to its end.
        pub const fn none() -> Self {
            CrashHook(None)
        }

        pub fn at(point: CrashPoint) -> Self {
            CrashHook(Some(point))
        }

        /// Fails as the crash would when the commit reached the crash point.
        pub fn check(self, stage: Stage) -> Result<(), Crashed> {
            let stop = match (self.0, stage) {
                (Some(CrashPoint::AfterChunks), Stage::ChunksWritten) => true,
                (Some(CrashPoint::AfterDecide), Stage::BatchesApplied(0)) => true,
                (Some(CrashPoint::AfterBatches(n)), Stage::BatchesApplied(applied)) => n == applied,
                _ => false,
            };
            match stage {
                _ if !stop => Ok(()),
                Stage::ChunksWritten => Err(CrashPoint::AfterChunks),
                Stage::BatchesApplied(0) => Err(CrashPoint::AfterDecide),
                Stage::BatchesApplied(n) => Err(CrashPoint::AfterBatches(n)),
            }
        }
    }
}

#[cfg(not(any(test, feature = "testing")))]
mod injected {
    use super::Stage;

    /// Release builds never stop a commit.
    pub type Crashed = std::convert::Infallible;

    /// Release builds: no crash point, nothing to check.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CrashHook;

    impl CrashHook {
        pub const fn none() -> Self {
            CrashHook
        }

        #[inline(always)]
        pub fn check(self, _stage: Stage) -> Result<(), Crashed> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_point_stops_only_its_own_stage() {
        let cases = [
            (CrashPoint::AfterChunks, Stage::ChunksWritten, true),
            (CrashPoint::AfterChunks, Stage::BatchesApplied(0), false),
            (CrashPoint::AfterDecide, Stage::ChunksWritten, false),
            (CrashPoint::AfterDecide, Stage::BatchesApplied(0), true),
            (CrashPoint::AfterDecide, Stage::BatchesApplied(1), false),
            (CrashPoint::AfterBatches(3), Stage::BatchesApplied(2), false),
            (CrashPoint::AfterBatches(3), Stage::BatchesApplied(3), true),
        ];
        for (point, stage, stops) in cases {
            let got = CrashHook::at(point).check(stage);
            assert_eq!(got.is_err(), stops, "{point:?} at {stage:?}");
        }
        assert!(CrashHook::none().check(Stage::ChunksWritten).is_ok());
        assert!(CrashHook::none().check(Stage::BatchesApplied(0)).is_ok());
    }
}
