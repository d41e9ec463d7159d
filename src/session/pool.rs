//! Which live session goes first when a cap is reached.
//!
//! Every live session is in exactly one of three pools, each in order of
//! last client activity:
//! - **unjoined**: no client has joined it yet (a page load, nothing more).
//!   Anonymous page loads cost only this pool: it has its own cap, and a
//!   new session only ever evicts unjoined ones.
//! - **detached**: a client joined it once, but none is connected now.
//! - **connected**: at least one client connection is open. Evicted last,
//!   and only to make room for a returning client when nothing else is left.

use std::collections::HashMap;

use super::lru::Lru;
use crate::id::SessionId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    Unjoined,
    Detached,
    Connected,
}

/// What making room for a session gives: the sessions to evict, and
/// whether the caps then hold (when not, the newcomer must be refused).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Room {
    pub victims: Vec<SessionId>,
    pub fits: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Pools {
    unjoined: Lru,
    detached: Lru,
    connected: Lru,
    of: HashMap<SessionId, Pool>,
}

impl Pools {
    fn lru(&mut self, p: Pool) -> &mut Lru {
        match p {
            Pool::Unjoined => &mut self.unjoined,
            Pool::Detached => &mut self.detached,
            Pool::Connected => &mut self.connected,
        }
    }

    /// Adds a session (new or restored) as unjoined, or marks activity of
    /// one already here.
    pub(crate) fn add(&mut self, id: SessionId) {
        self.of.entry(id).or_insert(Pool::Unjoined);
        self.bump(id);
    }

    /// Client activity: `id` becomes the most recent of its pool.
    pub(crate) fn bump(&mut self, id: SessionId) {
        if let Some(&p) = self.of.get(&id) {
            self.lru(p).bump(id);
        }
    }

    /// Moves `id` to pool `to` (as its most recent).
    pub(crate) fn set(&mut self, id: SessionId, to: Pool) {
        let Some(&from) = self.of.get(&id) else {
            return;
        };
        if from != to {
            self.lru(from).remove(&id);
            self.of.insert(id, to);
        }
        self.lru(to).bump(id);
    }

    pub(crate) fn remove(&mut self, id: &SessionId) {
        if let Some(p) = self.of.remove(id) {
            self.lru(p).remove(id);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.of.len()
    }

    /// The sessions with an open connection.
    pub(crate) fn connected(&self) -> Vec<SessionId> {
        self.connected.ids().copied().collect()
    }

    pub(crate) fn unjoined(&self) -> usize {
        self.unjoined.len()
    }

    /// Makes room after `newest` was added, taking victims from `order`
    /// (oldest first within each pool), never `newest` itself: until at
    /// most `max_total` sessions and `max_unjoined` unjoined ones are left.
    /// Victims leave the pools here.
    pub(crate) fn make_room(
        &mut self,
        newest: SessionId,
        max_total: usize,
        max_unjoined: usize,
        order: &[Pool],
    ) -> Room {
        let mut room = Room::default();
        while self.unjoined.len() > max_unjoined {
            match self.pop_except(Pool::Unjoined, newest) {
                Some(id) => room.victims.push(id),
                None => break,
            }
        }
        for &p in order {
            while self.of.len() > max_total {
                match self.pop_except(p, newest) {
                    Some(id) => room.victims.push(id),
                    None => break,
                }
            }
        }
        room.fits = self.of.len() <= max_total && self.unjoined.len() <= max_unjoined;
        room
    }

    fn pop_except(&mut self, p: Pool, keep: SessionId) -> Option<SessionId> {
        let id = self.lru(p).pop_oldest()?;
        if id == keep {
            // The newest is the most recent of its pool: nothing older left.
            self.lru(p).bump(id);
            return None;
        }
        self.of.remove(&id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<SessionId> {
        (0..n).map(|_| SessionId::generate().unwrap()).collect()
    }

    #[test]
    fn a_new_session_evicts_only_unjoined_ones() {
        let id = ids(6);
        let mut p = Pools::default();
        for i in &id[..5] {
            p.add(*i);
        }
        p.set(id[0], Pool::Connected);
        p.set(id[1], Pool::Detached);
        // Two unjoined at most: the oldest unjoined (2, 3) go.
        p.add(id[5]);
        let r = p.make_room(id[5], 10, 2, &[Pool::Unjoined]);
        assert_eq!(
            r,
            Room {
                victims: vec![id[2], id[3]],
                fits: true
            }
        );
        // Three in all at most: another unjoined (4), not a joined one.
        let r = p.make_room(id[5], 3, 2, &[Pool::Unjoined]);
        assert_eq!(
            r,
            Room {
                victims: vec![id[4]],
                fits: true
            }
        );
        // Nothing unjoined is left but the newest: it does not fit.
        let r = p.make_room(id[5], 2, 2, &[Pool::Unjoined]);
        assert_eq!(
            r,
            Room {
                victims: vec![],
                fits: false
            }
        );
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn a_returning_client_evicts_connected_sessions_last() {
        let id = ids(5);
        let mut p = Pools::default();
        for i in &id {
            p.add(*i);
        }
        p.set(id[0], Pool::Connected);
        p.set(id[1], Pool::Detached);
        p.set(id[2], Pool::Detached);
        p.bump(id[1]); // 2 is now the older detached one
        let all = [Pool::Unjoined, Pool::Detached, Pool::Connected];
        let r = p.make_room(id[4], 2, 10, &all);
        assert_eq!(r.victims, vec![id[3], id[2], id[1]]);
        assert!(r.fits);
        let r = p.make_room(id[4], 1, 10, &all);
        assert_eq!(r.victims, vec![id[0]]);
        assert_eq!(p.len(), 1);
        p.remove(&id[4]);
        assert_eq!((p.len(), p.unjoined()), (0, 0));
    }
}
