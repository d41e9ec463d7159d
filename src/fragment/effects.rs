//! Walking a region (`Op::Region`): statements that share a mutable
//! namespace. minijinja runs them in order, each seeing what the ones before
//! changed, so a region cannot reuse parts of its last render: when anything
//! it reads changed, all of it runs again, in order, from a fresh namespace.
//! It is still compared with the old tree as it goes, so the patch holds
//! only what changed (a leaf, a row), not the region.

use std::sync::Arc;

use super::compile::Body;
use super::eval::Scope;
use super::tree::SlotOut;
use super::{Change, Walk};
use crate::error::Result;

impl Walk<'_> {
    pub(super) fn region(
        &mut self,
        body: &Body,
        scope: &Scope,
        prev: Option<&SlotOut>,
        anchor: Option<&Arc<str>>,
    ) -> Result<(SlotOut, Change)> {
        let old = match prev {
            Some(SlotOut::Sub(b)) => Some(b),
            _ => None,
        };
        if let Some(o) = old {
            if !self.affected(&body.deps) {
                return Ok((SlotOut::Sub(o.clone()), Change::None));
            }
        }
        let saved = self.force;
        self.force = true;
        let r = self.body(body, scope, old);
        self.force = saved;
        let (b, dirty) = r?;
        let change = self.sub_change(prev.is_some(), old, &b, dirty, anchor);
        Ok((SlotOut::Sub(b), change))
    }
}
