//! Borrowed keys: look up a `Memoizer<(String, u32), V>` with a `(&str, u32)`.
//!
//! Keys are stored as their postcard encoding, and postcard writes a `&str` exactly as
//! it writes a `String` (likewise `&[T]` and `Vec<T>`, `&T` and `T`). So a borrowed form
//! that serializes like the key finds and stores the very entry the owned key does,
//! without building the owned key. [`KeyLike`] is the promise that it serializes alike;
//! it is implemented for the borrowed forms of std types, and tuples and options of
//! them.
//!
//! A memoizer with a keyfunc or zone key functions derives its stored key or its
//! dependency rows from `&K`: there the borrowed key is made owned first
//! ([`KeyLike::to_key`]), which costs what the owned form costs.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Value;
use crate::error::Error;
use crate::key::EncodedKey;
use crate::memoizer::Memoizer;

/// A borrowed form of the key type `K` that **serializes exactly like `K`**: `&str`
/// for `String`, `&[T]` for `Vec<T>`, `&T` for `T`, `(&str, u32)` for `(String, u32)`.
///
/// Implement it for a type of yours only if its `Serialize` makes the same serde calls
/// as `K`'s for equal values (a hand-written borrowed twin of a derived struct with the
/// same fields in the same order does): a key that serializes differently is simply
/// another key, so it misses where `K` would hit.
///
/// ```
/// use fresco_memoize::Cache;
///
/// let cache = Cache::in_memory()?;
/// let thumbnails = cache.memoizer::<(String, u32), String>("thumbs").build()?;
/// let path = String::from("cat.png");
/// let t = thumbnails.get_or_compute_with(&(path.as_str(), 256), |(p, px)| format!("{p}@{px}"));
/// // The owned key finds the same entry.
/// let owned = (path.clone(), 256);
/// assert_eq!(thumbnails.get_or_compute(&owned, |_| unreachable!()), t);
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
pub trait KeyLike<K>: Serialize {
    /// The owned key, for memoizers whose keyfunc or zone key functions need `&K`.
    fn to_key(&self) -> K;
}

impl<K, V: Value> Memoizer<K, V> {
    /// [`get_or_compute`](Self::get_or_compute) with a borrowed form of the key (see
    /// [`KeyLike`]): the same entry as the owned key, without building it.
    pub fn get_or_compute_with<Q: KeyLike<K> + ?Sized>(
        &self,
        key: &Q,
        compute: impl FnOnce(&Q) -> V,
    ) -> V {
        match self.try_get_or_compute_with(key, |q| Ok::<V, std::convert::Infallible>(compute(q))) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// [`try_get_or_compute`](Self::try_get_or_compute) with a borrowed form of the key.
    pub fn try_get_or_compute_with<Q: KeyLike<K> + ?Sized, E>(
        &self,
        key: &Q,
        compute: impl FnOnce(&Q) -> Result<V, E>,
    ) -> Result<V, E> {
        let mut slot = EncodedKey::empty();
        if self.core.policy.plain_keys {
            let ek = match slot.bytes.set(key) {
                Ok(()) => {
                    // Plain keys mean no zone keys: nothing to file the key under.
                    self.file_key(&mut slot, |_| None);
                    Ok(&mut slot)
                }
                Err(e) => Err(Error::KeyEncoding(e)),
            };
            return self.run(key, ek, |_| Ok(Vec::new()), compute);
        }
        let owned = key.to_key();
        let ek = self.encode_in(&owned, &mut slot);
        self.run(&owned, ek, |k| (self.deps.all)(k), |_| compute(key))
    }
}

/// Types that are their own borrowed form.
macro_rules! reflexive {
    ($($t:ty),*) => {$(
        impl KeyLike<$t> for $t {
            fn to_key(&self) -> $t {
                self.clone()
            }
        }
    )*};
}
reflexive!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    bool,
    char,
    f32,
    f64,
    (),
    String,
    PathBuf
);

impl<K: Serialize + Clone> KeyLike<K> for &K {
    fn to_key(&self) -> K {
        (*self).clone()
    }
}

impl KeyLike<String> for str {
    fn to_key(&self) -> String {
        self.to_string()
    }
}

impl KeyLike<String> for &str {
    fn to_key(&self) -> String {
        self.to_string()
    }
}

impl KeyLike<String> for Box<str> {
    fn to_key(&self) -> String {
        self.to_string()
    }
}

impl KeyLike<String> for Cow<'_, str> {
    fn to_key(&self) -> String {
        self.to_string()
    }
}

impl KeyLike<PathBuf> for Path {
    fn to_key(&self) -> PathBuf {
        self.to_path_buf()
    }
}

impl KeyLike<PathBuf> for &Path {
    fn to_key(&self) -> PathBuf {
        self.to_path_buf()
    }
}

impl<T: KeyLike<K>, K> KeyLike<Vec<K>> for [T] {
    fn to_key(&self) -> Vec<K> {
        self.iter().map(T::to_key).collect()
    }
}

impl<T: KeyLike<K>, K> KeyLike<Vec<K>> for &[T] {
    fn to_key(&self) -> Vec<K> {
        self.iter().map(T::to_key).collect()
    }
}

impl<T: KeyLike<K>, K> KeyLike<Vec<K>> for Vec<T> {
    fn to_key(&self) -> Vec<K> {
        self.iter().map(T::to_key).collect()
    }
}

impl<T: KeyLike<K>, K> KeyLike<Option<K>> for Option<T> {
    fn to_key(&self) -> Option<K> {
        self.as_ref().map(T::to_key)
    }
}

macro_rules! tuple {
    ($($q:ident $k:ident $i:tt),+) => {
        impl<$($q: KeyLike<$k>, $k),+> KeyLike<($($k,)+)> for ($($q,)+) {
            fn to_key(&self) -> ($($k,)+) {
                ($(self.$i.to_key(),)+)
            }
        }
    };
}
tuple!(A KA 0);
tuple!(A KA 0, B KB 1);
tuple!(A KA 0, B KB 1, C KC 2);
tuple!(A KA 0, B KB 1, C KC 2, D KD 3);
tuple!(A KA 0, B KB 1, C KC 2, D KD 3, E KE 4);
tuple!(A KA 0, B KB 1, C KC 2, D KD 3, E KE 4, F KF 5);

#[cfg(test)]
mod tests {
    use super::KeyLike;
    use crate::key::KeyBytes;
    use serde::Serialize;

    /// The promise `KeyLike` makes, checked for every impl: the borrowed form encodes to
    /// the owned key's bytes, and `to_key` gives back that key.
    fn alike<Q: KeyLike<K> + ?Sized, K: Serialize + PartialEq + std::fmt::Debug>(q: &Q, k: K) {
        let (qb, kb) = (KeyBytes::encode(q).unwrap(), KeyBytes::encode(&k).unwrap());
        assert_eq!(qb.as_slice(), kb.as_slice());
        assert_eq!(q.to_key(), k);
    }

    #[test]
    fn borrowed_forms_encode_like_their_keys() {
        let s = String::from("héllo");
        alike::<_, String>(&s.as_str(), s.clone());
        alike::<str, String>(s.as_str(), s.clone());
        alike::<_, String>(&Box::<str>::from("x"), "x".into());
        alike::<_, String>(&std::borrow::Cow::Borrowed("y"), "y".into());
        alike::<_, u64>(&&7u64, 7);
        alike::<_, (String, u32)>(&(s.as_str(), 256u32), (s.clone(), 256));
        alike::<_, Vec<String>>(&&["a", "b"][..], vec!["a".into(), "b".into()]);
        alike::<_, Option<String>>(&Some("z"), Some("z".into()));
        let p = std::path::PathBuf::from("/tmp/a");
        alike::<_, std::path::PathBuf>(&p.as_path(), p.clone());
        alike::<_, (u8, i64, char, bool, (), String)>(
            &(1u8, -2i64, 'c', true, (), "s"),
            (1, -2, 'c', true, (), "s".into()),
        );
    }
}
