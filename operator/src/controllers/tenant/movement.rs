//! A placed tenant whose target is not its cell (a new pin, a draining cell, a move under
//! way) is moved there before anything else: the mover ([`crate::controllers::moves`]) drives the move one
//! step per call and says when to come back.

use std::time::Duration;

use kube::ResourceExt;

use super::{
    Tenants,
    decide::{Want, wanted},
};
use crate::{
    cached_tenant::CachedTenant,
    context::readable,
    controllers::moves::{self, Mover},
    error::Result,
    logic::move_plan,
};

/// How soon a tenant waiting for its turn to leave a draining cell looks again.
const DRAIN_RECHECK: Duration = Duration::from_secs(2);

/// Where the reconcile goes after this step.
pub(super) enum Flow {
    /// Come back after this long (a move under way, or waiting for a turn to leave).
    Requeue(Duration),
    /// Go on; with the object as the mover left it, when it moved one.
    Continue(Option<Box<CachedTenant>>),
}

/// Moves `ta` towards its target when that is not where it lives, or goes on with a move under
/// way.
pub(super) async fn follow_target(ta: &CachedTenant, shared: &Tenants) -> Result<Flow> {
    let Some(cell) = ta.status.as_ref().and_then(|s| s.cell.clone()) else {
        return Ok(Flow::Continue(None));
    };
    let want = wanted(ta, &cell, shared).await;
    let moving = ta
        .status
        .as_ref()
        .and_then(|s| s.move_.as_ref())
        .is_some_and(|m| move_plan::in_progress(m.step));
    if let Want::Throttled = want
        && !moving
    {
        return Ok(Flow::Requeue(DRAIN_RECHECK));
    }
    let target = match &want {
        Want::Target(t) => Some(t.as_str()),
        Want::Stay | Want::Throttled => None,
    };
    if !moving && target.is_none_or(|t| t == cell) {
        return Ok(Flow::Continue(None));
    }
    // A tenant whose data its cell lost is not moved (an empty copy would hide the loss) until
    // the data is restored or the loss accepted.
    if !moving && ta.status.as_ref().is_some_and(|s| s.data_loss.is_some()) {
        return Ok(Flow::Continue(None));
    }
    let cells = readable(&shared.cells);
    let mut mover = Mover::load(&shared.ctx, &cells, shared.moves, &ta.name_any()).await?;
    Ok(match mover.drive(target).await? {
        moves::Outcome::Requeue(after) => Flow::Requeue(after),
        // Nothing (more) to move: go on with the object as the mover left it.
        moves::Outcome::Idle => Flow::Continue(Some(Box::new(mover.into_object().into()))),
    })
}
