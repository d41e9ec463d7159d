//! Sessions: one live page per browser, kept on the server, rendered
//! incrementally, streamed to every subscriber, expired when idle.
//!
//! - `builder.rs`: [`Builder`] and the engine's configuration;
//! - `engine.rs`: [`StateTemplate`], opening, restoring, evicting and
//!   expiring sessions;
//! - `state.rs`: the state of one live session;
//! - `handle.rs`: the [`Session`] handle;
//! - `events.rs`: what subscribers and reconnecting clients receive;
//! - `pool.rs`, `lru.rs`: the eviction pools; `stream.rs`: streams;
//!   `compat.rs`: the seed-compatible [`Renderer`].

mod builder;
mod cluster;
mod compat;
mod engine;
mod events;
mod follower;
mod handle;
mod lru;
mod pool;
mod state;
mod stream;

pub use builder::{Builder, EvictReason};
pub use compat::{Renderer, UpdateReceiver};
pub use engine::StateTemplate;
pub use events::{
    Catchup, Connection, InitialRender, KeptFrame, Pushed, Rendered, Resync, SessionEvent,
    Subscriber,
};
pub(crate) use follower::{Attached, Follower, Start, next_frame};
pub use handle::Session;
