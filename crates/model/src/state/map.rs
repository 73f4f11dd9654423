//! [`SharedMap`]: the ordered map a [`ClusterState`](super::ClusterState) keeps each kind in,
//! cheap to clone and to change one entry of.
//!
//! Entries are held in sorted chunks of at most [`MAX_CHUNK`], each behind an `Arc`, and the
//! list of chunks is itself behind an `Arc`. Cloning the map is one reference count; changing
//! an entry of a map whose chunks are shared copies the chunk list and that one chunk, so a
//! store that changes its state one object at a time while consumers hold earlier snapshots
//! does work proportional to the change, not to the cluster. Two maps derived from one
//! another still share their untouched chunks, which lets [`SharedMap::diff`] skip them.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The most entries one chunk holds; a fuller chunk is split in two.
const MAX_CHUNK: usize = 64;

type Chunk<K, V> = Vec<(K, V)>;

/// An ordered map with structure sharing (see the module's documentation).
pub(crate) struct SharedMap<K, V> {
    /// Never holds an empty chunk; chunks are in key order and do not overlap.
    chunks: Arc<Vec<Arc<Chunk<K, V>>>>,
    len: usize,
}

impl<K, V> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            chunks: Arc::clone(&self.chunks),
            len: self.len,
        }
    }
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        Self {
            chunks: Arc::default(),
            len: 0,
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for SharedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for SharedMap<K, V> {
    /// Later entries of a key replace earlier ones.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let sorted: std::collections::BTreeMap<K, V> = iter.into_iter().collect();
        let len = sorted.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(MAX_CHUNK / 2));
        let mut chunk = Vec::with_capacity(MAX_CHUNK / 2);
        for entry in sorted {
            chunk.push(entry);
            // Half-full chunks leave room to grow before the first split; the room is
            // allocated when an insert needs it, not before.
            if chunk.len() == MAX_CHUNK / 2 {
                chunks.push(Arc::new(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(MAX_CHUNK / 2),
                )));
            }
        }
        if !chunk.is_empty() {
            chunks.push(Arc::new(chunk));
        }
        Self {
            chunks: Arc::new(chunks),
            len,
        }
    }
}

impl<K, V> SharedMap<K, V> {
    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + Clone {
        self.chunks
            .iter()
            .flat_map(|c| c.iter().map(|(k, v)| (k, v)))
    }

    /// Every value, in key order.
    pub(crate) fn values(&self) -> impl DoubleEndedIterator<Item = &V> + Clone {
        self.iter().map(|(_, v)| v)
    }

    /// Whether `self` and `other` are one map (the same chunks): equal without looking.
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.chunks, &other.chunks)
    }
}

impl<K: Ord, V> SharedMap<K, V> {
    /// The index of the chunk that holds `key` if any does: the first whose last key is not
    /// below it (`chunks.len()` when every key is below it).
    fn chunk_of<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.chunks
            .partition_point(|c| c.last().is_some_and(|(k, _)| k.borrow() < key))
    }

    /// The value of `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let chunk = self.chunks.get(self.chunk_of(key))?;
        let i = chunk.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        Some(&chunk[i].1)
    }

    /// Whether `key` has a value.
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The entries from the first key not below `from`, in key order.
    pub(crate) fn range_from<'a, Q>(
        &'a self,
        from: &Q,
    ) -> impl Iterator<Item = (&'a K, &'a V)> + use<'a, K, V, Q>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let first = self.chunk_of(from);
        let skip = self
            .chunks
            .get(first)
            .map_or(0, |c| c.partition_point(|(k, _)| k.borrow() < from));
        self.chunks[first..]
            .iter()
            .flat_map(|c| c.iter().map(|(k, v)| (k, v)))
            .skip(skip)
    }
}

impl<K: Ord + Clone, V: Clone> SharedMap<K, V> {
    /// Sets `key` to `value`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let chunks = Arc::make_mut(&mut self.chunks);
        if chunks.is_empty() {
            chunks.push(Arc::new(vec![(key, value)]));
            self.len = 1;
            return None;
        }
        let at = chunks
            .partition_point(|c| c.last().is_some_and(|(k, _)| *k < key))
            .min(chunks.len() - 1);
        let chunk = Arc::make_mut(&mut chunks[at]);
        match chunk.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => return Some(std::mem::replace(&mut chunk[i].1, value)),
            Err(i) => chunk.insert(i, (key, value)),
        }
        self.len += 1;
        if chunk.len() > MAX_CHUNK {
            let upper = chunk.split_off(chunk.len() / 2);
            // The lower half keeps the room the full chunk grew into: as many entries again,
            // which, when a store lists its objects in key order, is never used (every insert
            // goes to the last chunk). Entries are large (an object and its key, hundreds of
            // bytes), so that room was half of what the maps held.
            chunk.shrink_to_fit();
            chunks.insert(at + 1, Arc::new(upper));
        }
        None
    }

    /// Removes `key`; returns its value. A key that is absent changes nothing (no chunk is
    /// copied).
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let at = self.chunk_of(key);
        let i = self
            .chunks
            .get(at)?
            .binary_search_by(|(k, _)| k.borrow().cmp(key))
            .ok()?;
        let chunks = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut chunks[at]);
        let (_, value) = chunk.remove(i);
        if chunk.is_empty() {
            chunks.remove(at);
        }
        self.len -= 1;
        Some(value)
    }
}

impl<K: Ord, V: PartialEq> SharedMap<K, V> {
    /// The keys whose entries differ between `self` and `other` (in one and not the other, or
    /// with other values), in key order. Chunks the two maps share are skipped unread, so two
    /// maps derived one from the other by a few changes are compared in time proportional to
    /// the changes.
    pub(crate) fn diff<'a>(&'a self, other: &'a Self) -> Vec<&'a K> {
        let mut out = Vec::new();
        if self.same(other) {
            return out;
        }
        let (a, b) = (&self.chunks, &other.chunks);
        // Cursors: (chunk, entry) into each map.
        let (mut ac, mut ai, mut bc, mut bi) = (0, 0, 0, 0);
        loop {
            // Both at the start of one shared chunk: skip it in both.
            while ai == 0 && bi == 0 && ac < a.len() && bc < b.len() && Arc::ptr_eq(&a[ac], &b[bc])
            {
                ac += 1;
                bc += 1;
            }
            let left = a.get(ac).map(|c| &c[ai]);
            let right = b.get(bc).map(|c| &c[bi]);
            let step_a = |ac: &mut usize, ai: &mut usize| {
                *ai += 1;
                if *ai == a[*ac].len() {
                    *ac += 1;
                    *ai = 0;
                }
            };
            let step_b = |bc: &mut usize, bi: &mut usize| {
                *bi += 1;
                if *bi == b[*bc].len() {
                    *bc += 1;
                    *bi = 0;
                }
            };
            match (left, right) {
                (None, None) => return out,
                (Some((k, _)), None) => {
                    out.push(k);
                    step_a(&mut ac, &mut ai);
                }
                (None, Some((k, _))) => {
                    out.push(k);
                    step_b(&mut bc, &mut bi);
                }
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        out.push(ka);
                        step_a(&mut ac, &mut ai);
                    }
                    std::cmp::Ordering::Greater => {
                        out.push(kb);
                        step_b(&mut bc, &mut bi);
                    }
                    std::cmp::Ordering::Equal => {
                        if va != vb {
                            out.push(ka);
                        }
                        step_a(&mut ac, &mut ai);
                        step_b(&mut bc, &mut bi);
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, u8),
        Remove(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..400, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u16..400).prop_map(Op::Remove),
        ]
    }

    fn apply(map: &mut SharedMap<u16, u8>, model: &mut BTreeMap<u16, u8>, op: &Op) {
        match *op {
            Op::Insert(k, v) => assert_eq!(map.insert(k, v), model.insert(k, v)),
            Op::Remove(k) => assert_eq!(map.remove(&k), model.remove(&k)),
        }
    }

    proptest! {
        /// Any sequence of changes leaves the map equal to a `BTreeMap` given the same, and
        /// leaves an earlier clone as it was.
        #[test]
        fn behaves_as_a_btreemap(
            start in proptest::collection::btree_map(0u16..400, any::<u8>(), 0..300),
            ops in proptest::collection::vec(op(), 0..200),
            from in 0u16..400,
        ) {
            let mut map: SharedMap<u16, u8> = start.clone().into_iter().collect();
            let before = map.clone();
            let mut model = start.clone();
            for op in &ops {
                apply(&mut map, &mut model, op);
            }
            prop_assert_eq!(map.len, model.len());
            prop_assert!(map.iter().eq(model.iter()));
            prop_assert!(before.iter().eq(start.iter()));
            for k in 0..400 {
                prop_assert_eq!(map.get(&k), model.get(&k));
            }
            prop_assert!(map.range_from(&from).eq(model.range(from..)));
            prop_assert!(map.chunks.iter().all(|c| !c.is_empty() && c.len() <= MAX_CHUNK));
        }

        /// `diff` names exactly the keys whose entries differ, whether the maps share chunks
        /// (one derived from the other) or not (built apart).
        #[test]
        fn diff_names_the_changed_keys(
            start in proptest::collection::btree_map(0u16..400, any::<u8>(), 0..300),
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let before: SharedMap<u16, u8> = start.clone().into_iter().collect();
            let mut after = before.clone();
            let mut model = start.clone();
            for op in &ops {
                apply(&mut after, &mut model, op);
            }
            let expected: Vec<u16> = (0..400)
                .filter(|k| start.get(k) != model.get(k))
                .collect();
            let shared: Vec<u16> = after.diff(&before).into_iter().copied().collect();
            prop_assert_eq!(&shared, &expected);
            let apart: SharedMap<u16, u8> = model.clone().into_iter().collect();
            let unshared: Vec<u16> = apart.diff(&before).into_iter().copied().collect();
            prop_assert_eq!(&unshared, &expected);
        }
    }

    /// A map filled in key order, as a store lists its objects, keeps no room beyond its last
    /// chunk (each chunk was shrunk when it split); a map built at once keeps none beyond its
    /// half-full chunks.
    #[test]
    fn chunks_keep_no_spare_room() {
        let mut listed = SharedMap::default();
        for k in 0..10_000u32 {
            listed.insert(k, k);
        }
        let (_, split) = listed.chunks.split_last().expect("chunks");
        assert!(split.iter().all(|c| c.capacity() == c.len()));
        let built: SharedMap<u32, u32> = (0..10_000).map(|k| (k, k)).collect();
        assert!(built.chunks.iter().all(|c| c.capacity() == MAX_CHUNK / 2));
    }

    #[test]
    fn a_change_copies_one_chunk_and_shares_the_rest() {
        let before: SharedMap<u32, u32> = (0..10_000).map(|k| (k, k)).collect();
        let mut after = before.clone();
        after.insert(5_000, 0);
        let shared = after
            .chunks
            .iter()
            .filter(|c| before.chunks.iter().any(|b| Arc::ptr_eq(b, c)))
            .count();
        assert_eq!(shared, after.chunks.len() - 1);
        assert_eq!(after.diff(&before), [&5_000]);
    }
}
