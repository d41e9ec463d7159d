//! Least-recently-used order of the live sessions, for `max_sessions`.

use std::collections::{BTreeMap, HashMap};

use crate::id::SessionId;

/// Every live session with the tick of its last activity. Bumping and
/// evicting are O(log n).
#[derive(Debug, Default)]
pub(crate) struct Lru {
    tick: u64,
    by_id: HashMap<SessionId, u64>,
    by_tick: BTreeMap<u64, SessionId>,
}

impl Lru {
    /// Marks `id` as used now (inserting it if new).
    pub(crate) fn bump(&mut self, id: SessionId) {
        self.tick += 1;
        if let Some(old) = self.by_id.insert(id, self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, id);
    }

    pub(crate) fn remove(&mut self, id: &SessionId) {
        if let Some(t) = self.by_id.remove(id) {
            self.by_tick.remove(&t);
        }
    }

    /// Removes and returns the least recently used id.
    pub(crate) fn pop_oldest(&mut self) -> Option<SessionId> {
        let (_, id) = self.by_tick.pop_first()?;
        self.by_id.remove(&id);
        Some(id)
    }

    /// Every id, in no particular order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &SessionId> {
        self.by_id.keys()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order() {
        let ids: Vec<SessionId> = (0..4).map(|_| SessionId::generate().unwrap()).collect();
        let mut l = Lru::default();
        for id in &ids {
            l.bump(*id);
        }
        l.bump(ids[0]);
        l.remove(&ids[2]);
        assert_eq!(l.len(), 3);
        assert_eq!(l.pop_oldest(), Some(ids[1]));
        assert_eq!(l.pop_oldest(), Some(ids[3]));
        assert_eq!(l.pop_oldest(), Some(ids[0]));
        assert_eq!(l.pop_oldest(), None);
        assert_eq!(l.len(), 0);
    }
}
