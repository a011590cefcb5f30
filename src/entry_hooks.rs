//! The entry codec, exposed (hidden, `fault-injection` feature) for the property tests and
//! the decode fuzz target, which build and take apart stored entries byte for byte.

use crate::entry::{self, Meta};
use crate::key::DepRow;

/// The parts of a stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// Fingerprint of the value type (and format, and memoizer version).
    pub fingerprint: u64,
    /// When the entry was stored (unix ms).
    pub stored_at_ms: u64,
    /// Its deadline (unix ms; 0 = never).
    pub expires_at_ms: u64,
    /// Its unique id.
    pub entry_id: u64,
    /// The encoded key.
    pub key: Vec<u8>,
    /// Dependency rows (zone id BE ++ dependency hash).
    pub deps: Vec<[u8; 24]>,
    /// The rkyv archive.
    pub payload: Vec<u8>,
}

/// Encodes an entry as the cache stores it.
pub fn encode(parts: &Parts) -> Vec<u8> {
    let meta = Meta {
        fingerprint: parts.fingerprint,
        stored_at_ms: parts.stored_at_ms,
        expires_at_ms: parts.expires_at_ms,
        entry_id: parts.entry_id,
    };
    let deps: &[DepRow] = &parts.deps;
    entry::encode(&meta, &parts.key, deps, &parts.payload, entry::Pad::Large)
}

/// Decodes stored bytes (`verify`: check the checksum too); `None` if malformed.
pub fn decode(bytes: &[u8], verify: bool) -> Option<Parts> {
    let view = entry::decode(bytes, verify).ok()?;
    Some(Parts {
        fingerprint: view.meta.fingerprint,
        stored_at_ms: view.meta.stored_at_ms,
        expires_at_ms: view.meta.expires_at_ms,
        entry_id: view.meta.entry_id,
        key: view.key.to_vec(),
        deps: view.deps().collect(),
        payload: bytes[view.payload_offset..].to_vec(),
    })
}
