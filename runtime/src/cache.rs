//! The in-memory cache of loaded modules of one device.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::backend::ModuleHandle;

/// Loaded modules of one device, keyed by a string the caller chooses — a content hash of
/// the module, or spec hash + direction + target + tile config + compiler fingerprint — so
/// loading the same module twice costs one lookup.
///
/// The on-disk artifact cache (DESIGN §7) sits in front of this one and comes later.
#[derive(Debug, Default)]
pub struct ModuleCache {
    modules: Mutex<HashMap<String, ModuleHandle>>,
}

impl ModuleCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The module stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<ModuleHandle> {
        self.lock().get(key).cloned()
    }

    /// Stores `module` under `key` unless another thread stored one first; returns the
    /// module that is in the cache afterwards (so concurrent loads agree on one).
    pub fn insert(&self, key: &str, module: ModuleHandle) -> ModuleHandle {
        self.lock().entry(key.to_owned()).or_insert(module).clone()
    }

    /// Removes the module under `key`; it unloads once no kernel of it is alive.
    pub fn remove(&self, key: &str) -> Option<ModuleHandle> {
        self.lock().remove(key)
    }

    /// Number of modules stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Drops every module.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModuleHandle>> {
        // A panic while holding the lock cannot leave the map half-updated (every operation
        // is one HashMap call), so a poisoned lock is still usable.
        self.modules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
