//! The queue's vocabulary: state codes and what happens after a failed
//! transfer. Pure decisions, no I/O; `sync` acts on them.

pub mod retry;
pub mod table;

/// Row states, with PowerSync's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum State {
    QueuedUpload = 0,
    QueuedDownload = 1,
    QueuedDelete = 2,
    Synced = 3,
    Archived = 4,
}

impl State {
    pub const ALL: [State; 5] =
        [State::QueuedUpload, State::QueuedDownload, State::QueuedDelete, State::Synced, State::Archived];

    pub fn from_code(code: i64) -> Option<State> {
        State::ALL.into_iter().find(|s| *s as i64 == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::QueuedUpload => "QUEUED_UPLOAD",
            State::QueuedDownload => "QUEUED_DOWNLOAD",
            State::QueuedDelete => "QUEUED_DELETE",
            State::Synced => "SYNCED",
            State::Archived => "ARCHIVED",
        }
    }

    /// States that still need a transfer.
    pub fn is_queued(self) -> bool {
        matches!(self, State::QueuedUpload | State::QueuedDownload | State::QueuedDelete)
    }
}

/// Milliseconds since the Unix epoch, the unit of `timestamp` and `next_attempt_at`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_powersync() {
        assert_eq!(State::QueuedUpload as i64, 0);
        assert_eq!(State::QueuedDownload as i64, 1);
        assert_eq!(State::QueuedDelete as i64, 2);
        assert_eq!(State::Synced as i64, 3);
        assert_eq!(State::Archived as i64, 4);
        for s in State::ALL {
            assert_eq!(State::from_code(s as i64), Some(s));
        }
        assert_eq!(State::from_code(5), None);
        assert_eq!(State::Archived.as_str(), "ARCHIVED");
    }
}
