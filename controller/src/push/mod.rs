//! Config push: the incremental (delta xDS) gRPC service agents and waypoints subscribe to.
//!
//! - [`resources`]: snapshots become numbered generations of versioned resources;
//! - [`interest`]: which resources each kind of client gets;
//! - [`subscription`]: per client and type, what it holds and what is in flight (pure);
//! - [`server`]: the gRPC service, one task per client stream;
//! - [`wire`]: its encoding, responses assembled from resources encoded once.
//!
//! Scaling to 10k pods / 50+ clients: a change is translated once and published as one generation
//! (`tokio::sync::watch`: a burst of changes coalesces, and a client always moves to the newest
//! state, never through a queue of stale ones). Resources are encoded and versioned once, when they
//! change, and every client's responses copy those bytes. A client up to 16 generations behind is
//! diffed only on the names that changed since; and each client has at most one response per type
//! in flight, so a slow client delays only itself.

pub mod interest;
pub mod resources;
pub mod server;
pub mod subscription;
pub mod wire;

pub use resources::Generation;
pub use server::{ClientDump, ConfigServer, PushMetrics};
pub use wire::ConfigDiscoveryService;
