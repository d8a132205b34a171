//! Length-bounded collections for wire types: decoding refuses more than `N` items
//! before allocating for them.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::TooLong;

/// A `Vec<T>` holding at most `N` items, on the heap (unlike `heapless::Vec`, whose
/// inline storage would make large bounds cost stack space).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BoundedVec<T, const N: usize>(Vec<T>);

impl<T, const N: usize> Default for BoundedVec<T, N> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T, const N: usize> BoundedVec<T, N> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `item`, failing when the list is full.
    pub fn push(&mut self, item: T) -> Result<(), TooLong> {
        if self.0.len() >= N {
            return Err(TooLong { limit: N, len: N + 1 });
        }
        self.0.push(item);
        Ok(())
    }

    /// The items.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// Gives back the inner vector.
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<T, const N: usize> TryFrom<Vec<T>> for BoundedVec<T, N> {
    type Error = TooLong;
    fn try_from(v: Vec<T>) -> Result<Self, TooLong> {
        if v.len() > N {
            return Err(TooLong { limit: N, len: v.len() });
        }
        Ok(Self(v))
    }
}

impl<T, const N: usize> core::ops::Deref for BoundedVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'a, T, const N: usize> IntoIterator for &'a BoundedVec<T, N> {
    type Item = &'a T;
    type IntoIter = core::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: Serialize, const N: usize> Serialize for BoundedVec<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for BoundedVec<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = BoundedVec<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of at most {N} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // postcard announces the exact length: refuse before reserving anything.
                let hint = seq.size_hint().unwrap_or(0);
                if hint > N {
                    return Err(A::Error::invalid_length(hint, &self));
                }
                let mut out = Vec::with_capacity(hint);
                while let Some(item) = seq.next_element()? {
                    if out.len() == N {
                        return Err(A::Error::invalid_length(N + 1, &self));
                    }
                    out.push(item);
                }
                Ok(BoundedVec(out))
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}

/// An opaque byte string of at most `N` bytes (certificates, CSRs), encoded compactly
/// as a length and the raw bytes.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bytes<const N: usize>(Vec<u8>);

impl<const N: usize> fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl<const N: usize> Bytes<N> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Gives back the inner vector.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl<const N: usize> TryFrom<Vec<u8>> for Bytes<N> {
    type Error = TooLong;
    fn try_from(v: Vec<u8>) -> Result<Self, TooLong> {
        if v.len() > N {
            return Err(TooLong { limit: N, len: v.len() });
        }
        Ok(Self(v))
    }
}

impl<const N: usize> TryFrom<&[u8]> for Bytes<N> {
    type Error = TooLong;
    fn try_from(v: &[u8]) -> Result<Self, TooLong> {
        Self::try_from(v.to_vec())
    }
}

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = Bytes<N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "at most {N} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                if v.len() > N {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(Bytes(v.to_vec()))
            }
        }
        d.deserialize_bytes(V::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_vec_round_trips_within_its_bound() {
        let v: BoundedVec<u32, 4> = vec![1, 2, 3].try_into().unwrap();
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert_eq!(postcard::from_bytes::<BoundedVec<u32, 4>>(&bytes).unwrap(), v);
    }

    #[test]
    fn bounded_vec_refuses_more_items_than_its_bound() {
        let bytes = postcard::to_allocvec(&vec![1u32, 2, 3, 4, 5]).unwrap();
        assert!(postcard::from_bytes::<BoundedVec<u32, 4>>(&bytes).is_err());
    }

    #[test]
    fn bounded_vec_refuses_a_huge_announced_length_without_allocating() {
        // varint length of u32::MAX followed by nothing: must fail fast, not reserve 16 GiB.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(postcard::from_bytes::<BoundedVec<u32, 4>>(&bytes).is_err());
    }

    #[test]
    fn bytes_refuse_more_than_their_bound() {
        let bytes = postcard::to_allocvec(&Bytes::<8>::try_from(vec![7u8; 8]).unwrap()).unwrap();
        assert!(postcard::from_bytes::<Bytes<8>>(&bytes).is_ok());
        assert!(postcard::from_bytes::<Bytes<7>>(&bytes).is_err());
        assert!(Bytes::<7>::try_from(vec![0u8; 8]).is_err());
    }
}

/// Text of at most `N` bytes kept on the heap: for longer, rarer strings (messages for
/// people) where inline `heapless` storage would bloat every value that holds one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct BoundedString<const N: usize>(String);

impl<const N: usize> BoundedString<N> {
    /// Cuts `s` at a character boundary to fit: a shortened message beats none.
    pub fn lossy(s: &str) -> Self {
        let mut end = s.len().min(N);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self(s[..end].to_owned())
    }
}

impl<const N: usize> TryFrom<&str> for BoundedString<N> {
    type Error = TooLong;
    fn try_from(s: &str) -> Result<Self, TooLong> {
        if s.len() > N {
            return Err(TooLong { limit: N, len: s.len() });
        }
        Ok(Self(s.to_owned()))
    }
}

impl<const N: usize> core::ops::Deref for BoundedString<N> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const N: usize> fmt::Display for BoundedString<N> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const N: usize> Serialize for BoundedString<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for BoundedString<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = BoundedString<N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "text of at most {N} bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                BoundedString::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_str(V::<N>)
    }
}

#[cfg(test)]
mod string_tests {
    use super::*;

    #[test]
    fn bounded_strings_refuse_overlong_text_and_cut_lossily_on_char_boundaries() {
        let bytes = postcard::to_allocvec("héllo").unwrap();
        assert!(postcard::from_bytes::<BoundedString<6>>(&bytes).is_ok());
        assert!(postcard::from_bytes::<BoundedString<5>>(&bytes).is_err());
        assert_eq!(&*BoundedString::<2>::lossy("héllo"), "h");
    }
}
