//! The remote store (feature `redis`): entries kept on a Redis or Valkey server, shared by
//! every process and machine that connects to the same namespace.
//!
//! Correctness rests on *stamps*, not on removing entries: every entry records the
//! values of the stamp keys it was computed under (its memoizer's generation, its zones'
//! generations, one stamp per dependency key), and is served only while all of them
//! still hold. An invalidation therefore writes one key, whatever the size of the cache.
//! See ARCHITECTURE.md, "The remote store", for the layout and the invariants.

mod conn;
mod connect;
mod layout;
mod lease;
mod memo;
mod push;
mod scripts;
mod service;
mod store;
#[cfg(test)]
mod tests;
mod tracking;
mod url;

pub(crate) use connect::{Options, name_id};
pub(crate) use push::listen_for;
pub(crate) use service::{Leading, RemoteTier, ServerRemoval, Service, Turn};
