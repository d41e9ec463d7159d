//! [`SessionLog`]: a session as a log store keeps it (a snapshot and the
//! deltas after it), and its replay. Shared by the SQLite and Redis stores.

use minijinja::Value;

use crate::fragment::Delta;
use crate::{Error, ErrorKind, Result};

/// One session's log as the store keeps it: the snapshot and the deltas
/// after it. [`SessionLog::replay`] rebuilds the session's data; that is
/// what [`SessionStore::load`](super::SessionStore::load) returns as the record's data.
#[derive(Debug, Clone)]
pub struct SessionLog {
    /// The version of the snapshot.
    pub snapshot_version: u64,
    /// The data at [`SessionLog::snapshot_version`].
    pub snapshot: Value,
    /// The deltas after the snapshot, as (version, delta), in order.
    pub deltas: Vec<(u64, Delta)>,
}

impl SessionLog {
    /// The data after every delta: the snapshot with each delta applied in
    /// version order. Fails if the versions have a gap or a delta does not
    /// apply (a damaged log).
    pub fn replay(&self) -> Result<Value> {
        let mut data = self.snapshot.clone();
        for (want, (v, d)) in (self.snapshot_version + 1..).zip(&self.deltas) {
            if *v != want {
                return Err(Error::new(
                    ErrorKind::Store,
                    format!("the session log has a gap: version {v} where {want} was expected"),
                ));
            }
            data = d.apply(&data).map_err(|e| {
                Error::new(
                    ErrorKind::Store,
                    format!("the session log's delta of version {v} does not apply: {e}"),
                )
            })?;
        }
        Ok(data)
    }
}
