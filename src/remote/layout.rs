//! Key names. Every key of a namespace starts with the hash tag `{fm:<namespace>}`, so a
//! Redis Cluster keeps the whole namespace in one slot, where scripts may read any of it.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `{fm:ns}:g:<memo>` | string | memoizer generation (a random value; replaced by `invalidate_all`) |
//! | `{fm:ns}:zg:<zone>` | string | zone generation (replaced by `Zone::invalidate_all`) |
//! | `{fm:ns}:s:<zone>:<dep>` | string | dependency stamp (created on first use; deleted by `Zone::invalidate`) |
//! | `{fm:ns}:e:<memo>:<row>` | hash | `v` entry bytes, `sk` stamp key names, `st` their values, `h` hits |
//! | `{fm:ns}:l:<memo>:<row>` | string | single-flight lease: the holder's token, `SET NX PX` |
//! | `{fm:ns}:k:<memo>:<row>` | string | key stamp (created on first use; deleted by `invalidate_key`) |
//!
//! `<memo>` and `<zone>` are 16 hex digits of the memoizer's and zone's ids, `<dep>` and
//! `<row>` 32 hex digits of a dependency and a row hash.

use std::fmt::Write;

use crate::error::Error;
use crate::key::DepRow;
use crate::key::KeyHash;

/// The key prefixes of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    tag: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Layout {
    /// Checks the namespace: printable, no braces (they would end the hash tag) and no
    /// newlines (the scripts separate key names with them).
    pub(crate) fn new(namespace: &str) -> Result<Self, Error> {
        let bad = namespace.is_empty()
            || namespace.len() > 200
            || namespace
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_control() || c.is_whitespace());
        if bad {
            return Err(Error::InvalidName {
                name: namespace.to_string(),
                reason: "a namespace is 1-200 printable characters without braces or spaces",
            });
        }
        Ok(Layout {
            tag: format!("{{fm:{namespace}}}"),
        })
    }

    /// A key in the namespace's hash slot (in a cluster, the node serving it serves the
    /// whole namespace).
    pub(crate) fn slot_key(&self) -> &str {
        &self.tag
    }

    pub(crate) fn generation(&self, memo: u64) -> String {
        format!("{}:g:{memo:016x}", self.tag)
    }

    pub(crate) fn zone_generation(&self, zone: u64) -> String {
        format!("{}:zg:{zone:016x}", self.tag)
    }

    /// The stamp of one dependency row (zone id ++ dependency hash).
    pub(crate) fn stamp(&self, row: &DepRow) -> String {
        format!("{}:s:{}:{}", self.tag, hex(&row[..8]), hex(&row[8..]))
    }

    pub(crate) fn entry(&self, memo: u64, row: &KeyHash) -> String {
        format!("{}:e:{memo:016x}:{}", self.tag, hex(row))
    }

    /// The stamp of one key of one memoizer.
    pub(crate) fn key_stamp(&self, memo: u64, row: &KeyHash) -> String {
        format!("{}:k:{memo:016x}:{}", self.tag, hex(row))
    }

    pub(crate) fn lease(&self, memo: u64, row: &KeyHash) -> String {
        format!("{}:l:{memo:016x}:{}", self.tag, hex(row))
    }

    /// The client name of this namespace's push listener (`CLIENT LIST` shows it).
    pub(crate) fn tracker_name(&self) -> String {
        format!("fresco-tracking:{}", &self.tag[4..self.tag.len() - 1])
    }

    /// The prefixes whose changes invalidate local copies (client tracking pushes).
    pub(crate) fn invalidating_prefixes(&self) -> [String; 4] {
        ["g", "zg", "s", "k"].map(|p| format!("{}:{p}:", self.tag))
    }

    /// Parses a key this layout names under one of [`Self::invalidating_prefixes`].
    pub(crate) fn parse_invalidation(&self, key: &[u8]) -> Option<Invalidated> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.tag.as_str())?.strip_prefix(':')?;
        let (kind, rest) = rest.split_once(':')?;
        match kind {
            "g" => Some(Invalidated::Memoizer(u64::from_str_radix(rest, 16).ok()?)),
            "zg" => Some(Invalidated::Zone(u64::from_str_radix(rest, 16).ok()?)),
            "k" => {
                let (memo, row) = rest.split_once(':')?;
                Some(Invalidated::Key(
                    u64::from_str_radix(memo, 16).ok()?,
                    u128::from_str_radix(row, 16).ok()?.to_be_bytes(),
                ))
            }
            "s" => {
                let (zone, dep) = rest.split_once(':')?;
                let mut row = [0u8; 24];
                row[..8].copy_from_slice(&u64::from_str_radix(zone, 16).ok()?.to_be_bytes());
                row[8..].copy_from_slice(&u128::from_str_radix(dep, 16).ok()?.to_be_bytes());
                Some(Invalidated::Dependency(row))
            }
            _ => None,
        }
    }
}

/// What a changed key of [`Layout::invalidating_prefixes`] invalidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalidated {
    Memoizer(u64),
    Zone(u64),
    Dependency(DepRow),
    /// One key of one memoizer (its row hash).
    Key(u64, KeyHash),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_and_parse_back() {
        let l = Layout::new("app").unwrap();
        let row = crate::key::dep_row(7, [0xab; 16]);
        let keys = [
            l.generation(1),
            l.zone_generation(7),
            l.stamp(&row),
            l.entry(1, &[1; 16]),
        ];
        assert!(keys.iter().all(|k| k.starts_with("{fm:app}:")), "{keys:?}");
        assert_eq!(
            l.parse_invalidation(l.generation(1).as_bytes()),
            Some(Invalidated::Memoizer(1))
        );
        assert_eq!(
            l.parse_invalidation(l.zone_generation(7).as_bytes()),
            Some(Invalidated::Zone(7))
        );
        assert_eq!(
            l.parse_invalidation(l.stamp(&row).as_bytes()),
            Some(Invalidated::Dependency(row))
        );
        assert_eq!(
            l.parse_invalidation(l.key_stamp(1, &[9; 16]).as_bytes()),
            Some(Invalidated::Key(1, [9; 16]))
        );
        assert_eq!(l.parse_invalidation(b"{fm:other}:g:0000000000000001"), None);
        assert_eq!(l.parse_invalidation(l.entry(1, &[1; 16]).as_bytes()), None);
    }

    #[test]
    fn namespaces_that_would_break_the_tag_are_refused() {
        for bad in ["", "a}b", "{x", "a b", "a\nb"] {
            assert!(Layout::new(bad).is_err(), "{bad:?}");
        }
    }
}
