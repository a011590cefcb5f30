//! The services every memoizer of a cache uses: the storage, its writer, the clock, the
//! entry id counter, the invalidation fence and (feature `redis`) the server. Below the memoizers' tiers, which hold it;
//! knows nothing of memoizers, zones or the sweeper (those live in [`crate::inner`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::clock::Clock;
use crate::fence::Fence;
use crate::storage::Storage;
use crate::storage::writer::Writer;

pub(crate) struct Shared {
    pub storage: Arc<Storage>,
    pub writer: Writer,
    pub clock: Arc<dyn Clock>,
    /// Whether memoizers default to the persistent store.
    pub file_backed: bool,
    pub next_entry_id: AtomicU64,
    pub fence: Fence,
    /// The server of a connected cache (feature `redis`): its persistent memoizers'
    /// tier, and the backend of their invalidations (`tiers::invalidate`).
    pub remote: RemoteService,
}

/// The server of a connected cache; never present without the `redis` feature.
#[cfg(feature = "redis")]
pub(crate) type RemoteService = Option<Arc<crate::remote::Service>>;
/// The server of a connected cache; never present without the `redis` feature.
#[cfg(not(feature = "redis"))]
pub(crate) type RemoteService = Option<std::convert::Infallible>;

impl Drop for Shared {
    fn drop(&mut self) {
        // Commits whatever is pending durably; redb persists the rest on close.
        self.writer.shutdown();
    }
}
