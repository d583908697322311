//! The detector's per-publisher table: a vector of entries indexed by a
//! hash map, with the last entry used checked first, so a stream from one
//! publisher (the common case) costs a short byte comparison per message
//! instead of hashing the publisher id.
//!
//! Part of the Suicidal Snail detector; pure, no I/O, no clock.

use std::collections::HashMap;

use bytes::Bytes;

#[derive(Debug, Clone)]
pub(super) struct Table<V> {
    index: HashMap<Bytes, usize>,
    slots: Vec<(Bytes, V)>,
    last: usize,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            last: 0,
        }
    }
}

impl<V> Table<V> {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot of `id`, trying the last one used first.
    #[inline]
    pub(super) fn find(&mut self, id: &[u8]) -> Option<usize> {
        if let Some((k, _)) = self.slots.get(self.last) {
            if k.as_ref() == id {
                return Some(self.last);
            }
        }
        let i = *self.index.get(id)?;
        self.last = i;
        Some(i)
    }

    pub(super) fn insert(&mut self, id: Bytes, v: V) -> usize {
        let i = self.slots.len();
        self.index.insert(id.clone(), i);
        self.slots.push((id, v));
        self.last = i;
        i
    }

    pub(super) fn slot_mut(&mut self, i: usize) -> (&Bytes, &mut V) {
        let (k, v) = &mut self.slots[i];
        (k, v)
    }

    pub(super) fn get(&self, id: &[u8]) -> Option<&V> {
        self.index.get(id).map(|&i| &self.slots[i].1)
    }

    pub(super) fn get_mut(&mut self, id: &[u8]) -> Option<&mut V> {
        let i = self.find(id)?;
        Some(&mut self.slots[i].1)
    }

    pub(super) fn remove(&mut self, id: &[u8]) -> Option<V> {
        let i = self.index.remove(id)?;
        let (_, v) = self.slots.swap_remove(i);
        if let Some((moved, _)) = self.slots.get(i) {
            self.index.insert(moved.clone(), i);
        }
        self.last = 0;
        Some(v)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Bytes, &V)> {
        self.slots.iter().map(|(k, v)| (k, v))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots.iter_mut().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_insert_remove_keep_the_index_right() {
        let mut t = Table::default();
        for id in ["a", "b", "c"] {
            t.insert(Bytes::from(id), id.to_owned());
        }
        assert_eq!(t.find(b"b"), Some(1));
        assert_eq!(t.remove(b"a").as_deref(), Some("a"));
        assert_eq!(t.len(), 2);
        // "c" moved into slot 0.
        assert_eq!(t.find(b"c"), Some(0));
        assert_eq!(t.get(b"b").map(String::as_str), Some("b"));
        assert_eq!(t.find(b"a"), None);
        *t.get_mut(b"c").unwrap() = "C".into();
        let all: Vec<_> = t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(
            all,
            [
                (Bytes::from("c"), "C".to_owned()),
                (Bytes::from("b"), "b".to_owned())
            ]
        );
    }
}
