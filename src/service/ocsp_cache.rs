//! A map bounded by the memory its entries hold, not by their number: the
//! OCSP responder keeps signed answers of very different sizes (an answer
//! carries its responder's certificate), and a bound of so many answers
//! left the server's footprint to the size of each one. When an insert
//! would pass the budget the map is emptied and refills from demand —
//! simple, and filling it on purpose costs an attacker HSM signatures,
//! not the server's memory.

use std::collections::HashMap;
use std::hash::Hash;

/// What a key or value holds on the heap, beyond its own size.
pub(super) trait HeapSize {
    fn heap_bytes(&self) -> usize;
}

pub(super) struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    bytes: usize,
    budget: usize,
}

impl<K: Hash + Eq + HeapSize, V: HeapSize> BoundedMap<K, V> {
    pub(super) fn new(budget: usize) -> Self {
        Self {
            map: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// An entry's share of memory: its heap, its slot in the table and the
    /// table's control byte.
    fn cost(k: &K, v: &V) -> usize {
        std::mem::size_of::<(K, V)>() + 1 + k.heap_bytes() + v.heap_bytes()
    }

    pub(super) fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub(super) fn insert(&mut self, k: K, v: V) {
        self.remove(&k);
        let cost = Self::cost(&k, &v);
        if self.bytes + cost > self.budget {
            // The emptied table's capacity goes too: the budget is about
            // memory.
            self.map = HashMap::new();
            self.bytes = 0;
        }
        self.bytes += cost;
        self.map.insert(k, v);
    }

    pub(super) fn remove(&mut self, k: &K) {
        if let Some((k, v)) = self.map.remove_entry(k) {
            self.bytes -= Self::cost(&k, &v);
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl HeapSize for String {
        fn heap_bytes(&self) -> usize {
            self.capacity()
        }
    }

    impl HeapSize for Vec<u8> {
        fn heap_bytes(&self) -> usize {
            self.capacity()
        }
    }

    type Map = BoundedMap<String, Vec<u8>>;

    /// Capacities equal to lengths, so that clones cost the same.
    fn entry(i: usize, len: usize) -> (String, Vec<u8>) {
        let mut key = format!("{i:04}");
        key.shrink_to_fit();
        (key, vec![0; len])
    }

    #[test]
    fn the_budget_is_bytes_not_entries() {
        let (k, v) = entry(0, 1000);
        let one = Map::cost(&k, &v);
        let mut map = Map::new(10 * one);
        for i in 0..10 {
            let (k, v) = entry(i, 1000);
            map.insert(k, v);
        }
        assert_eq!((map.len(), map.bytes()), (10, 10 * one));
        // The eleventh does not fit: the map starts over with it alone.
        let (k, v) = entry(10, 1000);
        map.insert(k, v);
        assert_eq!((map.len(), map.bytes()), (1, one));
        // Small entries: many more fit in the same budget.
        let mut small = Map::new(10 * one);
        for i in 0..40 {
            let (k, v) = entry(i, 100);
            small.insert(k, v);
        }
        assert_eq!(small.len(), 40);
        assert!(small.bytes() <= 10 * one);
    }

    #[test]
    fn replacing_and_removing_give_their_bytes_back() {
        let mut map = Map::new(1 << 20);
        let (k, v) = entry(1, 500);
        map.insert(k.clone(), v);
        let (_, bigger) = entry(1, 800);
        map.insert(k.clone(), bigger.clone());
        assert_eq!(map.bytes(), Map::cost(&k, &bigger));
        let (k2, v2) = entry(2, 300);
        map.insert(k2.clone(), v2);
        map.remove(&k2);
        assert_eq!(map.bytes(), Map::cost(&k, &bigger));
        map.remove(&k);
        assert_eq!((map.len(), map.bytes()), (0, 0));
        assert!(map.get(&k).is_none());
    }
}
