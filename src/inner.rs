//! `CacheInner`: what every handle of one cache shares - the services ([`Shared`]), the
//! live memoizers, the zones and the background thread - in a module that the cache,
//! memoizer, zone, sweeper, integrity and inspect modules all import downward.
//!
//! It names the layers above only through what it needs of them: live memoizers as
//! their [`Tiers`] (the layer below them), the sweeper as a [`Background`] trait object.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::storage::ops;
use crate::tiers::Tiers;

/// The cache's background thread (the sweeper), as the cache sees it.
pub(crate) trait Background: Send + Sync {
    /// Stops the thread and waits for it (unless called from it).
    fn stop(&self);
    /// Called as a `Cache` handle is dropped: stops the thread if it is the last one.
    fn release(&self, inner: &Arc<CacheInner>);
    /// Sweeps completed and entries they removed (test hook).
    fn sweeps(&self) -> (u64, u64);
    /// Waits until `sweeps` sweeps completed or `timeout` passed; the count reached.
    fn wait_sweeps(&self, sweeps: u64, timeout: Duration) -> u64;
    /// Asks for a sweep now and waits for it (up to `timeout`); the count reached.
    fn sweep_now(&self, timeout: Duration) -> u64;
}

/// A zone's state, shared by its handles.
pub(crate) struct ZoneState {
    pub name: String,
    pub id: u64,
    pub cache: Weak<CacheInner>,
    /// `Arc<KeysFn<A>>` (see `zone.rs`) for the argument type `A` of the zone's default
    /// key function.
    pub default_key: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
    members: Mutex<Vec<Weak<Tiers>>>,
}

impl ZoneState {
    /// Records a live member built in this run.
    pub(crate) fn attach(&self, tiers: &Arc<Tiers>) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|w| w.strong_count() > 0);
        if !members
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(tiers)))
        {
            members.push(Arc::downgrade(tiers));
        }
    }

    pub(crate) fn live_members(&self) -> Vec<Arc<Tiers>> {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.iter().filter_map(Weak::upgrade).collect()
    }
}

pub(crate) struct CacheInner {
    pub shared: Arc<Shared>,
    /// Live memoizers by name.
    live: Mutex<HashMap<String, Weak<Tiers>>>,
    zones: Mutex<HashMap<String, Arc<ZoneState>>>,
    /// The expiry sweeper, if enabled (set once, right after the cache is built).
    pub background: OnceLock<Box<dyn Background>>,
}

impl Drop for CacheInner {
    fn drop(&mut self) {
        if let Some(background) = self.background.get() {
            background.stop();
        }
        // Dropping `shared` then stops the writer, which commits what is pending.
    }
}

/// Names are stored in the file; keep them printable and bounded.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "names must not be empty"
    } else if name.len() > 200 {
        "names must be at most 200 bytes"
    } else if name.chars().any(char::is_control) {
        "names must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

impl CacheInner {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        CacheInner {
            shared,
            live: Mutex::new(HashMap::new()),
            zones: Mutex::new(HashMap::new()),
            background: OnceLock::new(),
        }
    }

    /// The zone named `name`, registered in the file if missing.
    pub(crate) fn zone(self: &Arc<Self>, name: &str) -> Result<Arc<ZoneState>> {
        check_name(name)?;
        let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(z) = zones.get(name) {
            return Ok(z.clone());
        }
        let shared = &self.shared;
        // Known from an earlier run (every start after the first): a read suffices.
        // A connected cache's zone ids name keys on the server: the same on every machine.
        let known = if shared.remote.is_some() {
            Some(crate::fingerprint::name_hash(name))
        } else {
            shared
                .storage
                .read(|txn| ops::zone_id(txn, name))
                .ok()
                .flatten()
        };
        let id = match known {
            Some(id) => id,
            None => {
                let owned = name.to_string();
                let id = shared
                    .writer
                    .run(move |txn| ops::register_zone(txn, &owned))?;
                shared.storage.registered();
                id
            }
        };
        let zone = Arc::new(ZoneState {
            name: name.to_string(),
            id,
            cache: Arc::downgrade(self),
            default_key: Mutex::new(None),
            members: Mutex::new(Vec::new()),
        });
        zones.insert(name.to_string(), zone.clone());
        Ok(zone)
    }

    /// Registers a live memoizer under its name: `register` builds it, unless one of
    /// that name is alive already ([`Error::MemoizerInUse`]). Holds the registry's lock
    /// throughout, so two builds of one name cannot both succeed.
    pub(crate) fn register_live(
        &self,
        name: &str,
        register: impl FnOnce() -> Result<Arc<Tiers>>,
    ) -> Result<Arc<Tiers>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.get(name).is_some_and(|w| w.strong_count() > 0) {
            return Err(Error::MemoizerInUse {
                name: name.to_string(),
            });
        }
        let tiers = register()?;
        live.insert(name.to_string(), Arc::downgrade(&tiers));
        Ok(tiers)
    }

    /// The live memoizer named `name`, if any.
    pub(crate) fn live_by_name(&self, name: &str) -> Option<Arc<Tiers>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(name).and_then(Weak::upgrade)
    }

    /// The live members of the zone with id `id` (none if no handle of it was made).
    pub(crate) fn zone_members_by_id(&self, id: u64) -> Vec<Arc<Tiers>> {
        let zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        zones
            .values()
            .filter(|z| z.id == id)
            .flat_map(|z| z.live_members())
            .collect()
    }

    /// Every live memoizer.
    pub(crate) fn live_all(&self) -> Vec<Arc<Tiers>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.values().filter_map(Weak::upgrade).collect()
    }

    /// `members`, plus every other live memoizer whose persistent id is in `ids` (one
    /// recorded as a member by an earlier run that this run built without the zone).
    pub(crate) fn with_strangers(
        &self,
        mut members: Vec<Arc<Tiers>>,
        ids: &[u64],
    ) -> Vec<Arc<Tiers>> {
        let known = |members: &[Arc<Tiers>], id: u64| {
            members
                .iter()
                .any(|m| m.persistent.as_ref().is_some_and(|p| p.id == id))
        };
        let strangers: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|&id| !known(&members, id))
            .collect();
        if !strangers.is_empty() {
            for tiers in self.live_all() {
                if tiers
                    .persistent
                    .as_ref()
                    .is_some_and(|p| strangers.contains(&p.id))
                {
                    members.push(tiers);
                }
            }
        }
        members
    }
}
