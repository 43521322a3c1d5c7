//! Topic trie: the routing index from MQTT subscription filters to entries.
//!
//! [`Trie`] owns a map from plain topic filters (e.g. `sensors/+/temp/#`) to a
//! set of entries keyed by `K` (typically a session or client id) with a value
//! `V` (typically the subscription options), and answers "which entries match
//! this topic name?" via [`Trie::for_each_match`], following MQTT 3.1.1 §4.7 and
//! MQTT 5.0 §4.7.
//!
//! It does **not** own: filter validation (callers pass valid filters),
//! shared-subscription groups (`$share/{group}/...` is stripped and grouped by
//! the caller), sessions, ACLs, retained messages, or de-duplication of a key
//! that matches through several filters (the caller merges).
//!
//! Layout: each node holds its named children in a `HashMap<Box<str>, Node>`
//! (boxed, and absent while there are none: most nodes are leaves),
//! the `+` child separately, and two entry sets — entries whose filter ends at
//! this node and entries whose filter ends with `/#` below this node. Matching
//! is one hash probe per topic level plus the `+` branches, and never
//! allocates. Trie depth equals the longest filter's level count; matching
//! recursion only grows with `+` levels, but callers should still bound the
//! number of levels per filter (insert/remove/drop are depth-proportional).

use std::collections::HashMap as StdHashMap;
use std::hash::Hash;
use std::str::Split;

/// The trie's maps hash with foldhash, seeded at random per map (topic levels are the
/// clients' choice, so the seed must not be fixed): one probe per topic level costs a third
/// of SipHash's time.
type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;

/// Entry sets at or below this size are searched linearly; larger ones get a
/// key → position index.
const INDEX_THRESHOLD: usize = 8;

/// Entries of one filter, stored contiguously for fast iteration. 16 bytes: every node
/// holds one set inline.
enum Entries<K, V> {
    /// Up to [`INDEX_THRESHOLD`] entries, searched linearly: a boxed slice, exactly as
    /// long as needed (most filters have one subscriber).
    Small(Box<[(K, V)]>),
    /// A large set, with a key → position index (boxed: few sets are large).
    Large(Box<Indexed<K, V>>),
}

/// A large entry set and its index.
struct Indexed<K, V> {
    items: Vec<(K, V)>,
    /// Position of each key in `items`.
    index: HashMap<K, usize>,
}

impl<K: Eq + Hash + Clone, V> Entries<K, V> {
    fn new() -> Self {
        Entries::Small(Box::default())
    }

    fn items(&self) -> &[(K, V)] {
        match self {
            Entries::Small(items) => items,
            Entries::Large(large) => &large.items,
        }
    }

    fn is_empty(&self) -> bool {
        self.items().is_empty()
    }

    fn position(&self, key: &K) -> Option<usize> {
        match self {
            Entries::Small(items) => items.iter().position(|(k, _)| k == key),
            Entries::Large(large) => large.index.get(key).copied(),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|i| &self.items()[i].1)
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.position(&key) {
            let items = match self {
                Entries::Small(items) => &mut items[..],
                Entries::Large(large) => &mut large.items[..],
            };
            return Some(std::mem::replace(&mut items[i].1, value));
        }
        match self {
            Entries::Small(items) if items.len() >= INDEX_THRESHOLD => {
                let items = std::mem::take(items).into_vec();
                let index = items
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.clone(), i))
                    .collect();
                let mut large = Box::new(Indexed { items, index });
                large.index.insert(key.clone(), large.items.len());
                large.items.push((key, value));
                *self = Entries::Large(large);
            }
            Entries::Small(items) => {
                let mut grown = std::mem::take(items).into_vec();
                grown.reserve_exact(1);
                grown.push((key, value));
                *items = grown.into_boxed_slice();
            }
            Entries::Large(large) => {
                large.index.insert(key.clone(), large.items.len());
                large.items.push((key, value));
            }
        }
        None
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let value = match self {
            Entries::Small(items) => {
                let pos = items.iter().position(|(k, _)| k == key)?;
                let mut shrunk = std::mem::take(items).into_vec();
                let (_, value) = shrunk.swap_remove(pos);
                *items = shrunk.into_boxed_slice();
                value
            }
            Entries::Large(large) => {
                let pos = large.index.remove(key)?;
                let (_, value) = large.items.swap_remove(pos);
                if let Some((moved, _)) = large.items.get(pos) {
                    if let Some(slot) = large.index.get_mut(moved) {
                        *slot = pos;
                    }
                }
                value
            }
        };
        if self.is_empty() {
            // Release the memory of a formerly large set.
            *self = Self::new();
        }
        Some(value)
    }

    #[inline]
    fn visit<F: FnMut(&K, &V)>(&self, f: &mut F) {
        for (k, v) in self.items() {
            f(k, v);
        }
    }
}

/// The named children of a node, by level.
type Children<K, V> = HashMap<Box<str>, Node<K, V>>;

/// One topic level of the trie: 32 bytes, because most nodes are leaves of one filter,
/// and every named node sits in its parent's map.
struct Node<K, V> {
    /// Children reached by a literal level (possibly empty, `""`); `None` while there
    /// are none, so a leaf carries 8 bytes here instead of an empty map's 48.
    #[allow(clippy::box_collection)]
    named: Option<Box<Children<K, V>>>,
    /// Entries whose filter ends at this node.
    exact: Entries<K, V>,
    /// The wildcards below this node, boxed, and absent while there are none: few
    /// filters have them.
    wild: Option<Box<Wild<K, V>>>,
}

/// What follows a node by a wildcard.
struct Wild<K, V> {
    /// Child reached by the `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Entries whose filter is the node's path followed by `/#` (or `#` at the root).
    multi: Entries<K, V>,
}

impl<K, V> Wild<K, V> {
    fn is_empty(&self) -> bool {
        self.plus.is_none() && self.multi.items_len() == 0
    }
}

impl<K, V> Entries<K, V> {
    fn items_len(&self) -> usize {
        match self {
            Entries::Small(items) => items.len(),
            Entries::Large(large) => large.items.len(),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Node<K, V> {
    fn new() -> Self {
        Self {
            named: None,
            exact: Entries::new(),
            wild: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.named.is_none() && self.exact.is_empty() && self.wild.is_none()
    }

    /// The `+` child.
    fn plus(&self) -> Option<&Node<K, V>> {
        self.wild.as_deref()?.plus.as_deref()
    }

    /// The entries of `/#` filters ending here, if any.
    fn multi(&self) -> Option<&Entries<K, V>> {
        self.wild.as_deref().map(|wild| &wild.multi)
    }

    /// The wildcards, made if absent.
    fn wild_mut(&mut self) -> &mut Wild<K, V> {
        self.wild.get_or_insert_with(|| {
            Box::new(Wild {
                plus: None,
                multi: Entries::new(),
            })
        })
    }

    /// Drops the wildcards if nothing is left in them.
    fn prune_wild(&mut self) {
        if self.wild.as_deref().is_some_and(Wild::is_empty) {
            self.wild = None;
        }
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        if level == "+" {
            self.plus()
        } else {
            self.named_child(level)
        }
    }

    /// The named child for `level`.
    fn named_child(&self, level: &str) -> Option<&Node<K, V>> {
        self.named.as_ref()?.get(level)
    }

    /// The entry set of `slot`, made if absent.
    fn entries_mut(&mut self, slot: Slot) -> &mut Entries<K, V> {
        match slot {
            Slot::Exact => &mut self.exact,
            Slot::Multi => &mut self.wild_mut().multi,
        }
    }

    /// Inserts below `self` along `levels`. Returns the previous value and
    /// whether the entry set was empty before.
    fn insert<'a>(
        &mut self,
        mut levels: impl Iterator<Item = &'a str>,
        slot: Slot,
        key: K,
        value: V,
    ) -> (Option<V>, bool) {
        let Some(level) = levels.next() else {
            let entries = self.entries_mut(slot);
            let was_empty = entries.is_empty();
            return (entries.insert(key, value), was_empty);
        };
        if level == "+" {
            let child = self
                .wild_mut()
                .plus
                .get_or_insert_with(|| Box::new(Node::new()));
            return child.insert(levels, slot, key, value);
        }
        // Probe first so the common "already exists" path allocates no key.
        let named = self.named.get_or_insert_default();
        if let Some(child) = named.get_mut(level) {
            return child.insert(levels, slot, key, value);
        }
        let child = named.entry(level.into()).or_insert_with(Node::new);
        child.insert(levels, slot, key, value)
    }

    /// Removes below `self` along `levels`, pruning children left empty.
    /// Returns the value and whether its entry set became empty.
    fn remove<'a>(
        &mut self,
        mut levels: impl Iterator<Item = &'a str>,
        slot: Slot,
        key: &K,
    ) -> Option<(V, bool)> {
        let Some(level) = levels.next() else {
            let entries = match slot {
                Slot::Exact => &mut self.exact,
                Slot::Multi => &mut self.wild.as_deref_mut()?.multi,
            };
            let value = entries.remove(key)?;
            let now_empty = entries.is_empty();
            self.prune_wild();
            return Some((value, now_empty));
        };
        if level == "+" {
            let wild = self.wild.as_deref_mut()?;
            let child = wild.plus.as_deref_mut()?;
            let removed = child.remove(levels, slot, key)?;
            if child.is_empty() {
                wild.plus = None;
                self.prune_wild();
            }
            Some(removed)
        } else {
            let named = self.named.as_mut()?;
            let child = named.get_mut(level)?;
            let removed = child.remove(levels, slot, key)?;
            if child.is_empty() {
                named.remove(level);
                if named.is_empty() {
                    self.named = None;
                }
            }
            Some(removed)
        }
    }

    /// Visits every entry under `self` matching the remaining `levels`.
    /// Loops down named children; recurses only into `+` branches.
    /// `on_set` is called before the entries of each non-empty filter are visited.
    fn walk<F: FnMut(&K, &V), G: FnMut()>(
        &self,
        mut levels: Split<'_, char>,
        f: &mut F,
        on_set: &mut G,
    ) {
        let mut node = self;
        loop {
            // `#` matches the parent level and any number of child levels.
            if let Some(multi) = node.multi().filter(|multi| !multi.is_empty()) {
                on_set();
                multi.visit(f);
            }
            let Some(level) = levels.next() else {
                if !node.exact.is_empty() {
                    on_set();
                    node.exact.visit(f);
                }
                return;
            };
            if let Some(plus) = node.plus() {
                plus.walk(levels.clone(), f, on_set);
            }
            match node.named_child(level) {
                Some(child) => node = child,
                None => return,
            }
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.named
            .iter()
            .flat_map(|named| named.values())
            .map(|c| 1 + c.count())
            .sum::<usize>()
            + self.plus().map_or(0, |c| 1 + c.count())
    }
}

/// Where an entry of a filter lives, relative to the node of its last
/// non-`#` level.
#[derive(Clone, Copy)]
enum Slot {
    Exact,
    Multi,
}

/// Splits a filter into the levels leading to its node (`None` for the root,
/// i.e. the filter `#`) and its slot there.
fn path(filter: &str) -> (Option<&str>, Slot) {
    if filter == "#" {
        (None, Slot::Multi)
    } else if let Some(prefix) = filter.strip_suffix("/#") {
        (Some(prefix), Slot::Multi)
    } else {
        (Some(filter), Slot::Exact)
    }
}

/// The levels of a prefix produced by [`path`].
fn levels(prefix: Option<&str>) -> impl Iterator<Item = &str> {
    prefix.into_iter().flat_map(|p| p.split('/'))
}

/// A trie of MQTT topic filters mapping each `(filter, key)` pair to a value.
pub struct Trie<K, V> {
    root: Node<K, V>,
    len: usize,
    filters: usize,
}

impl<K: Eq + Hash + Clone, V> Trie<K, V> {
    /// Creates an empty trie.
    pub fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
            filters: 0,
        }
    }

    /// Inserts or replaces the entry for `key` under `filter`; returns the
    /// previous value. `filter` is a valid plain MQTT topic filter (no
    /// `$share/` prefix; the caller validated it).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let (prefix, slot) = path(filter);
        let (previous, was_empty) = self.root.insert(levels(prefix), slot, key, value);
        if previous.is_none() {
            self.len += 1;
            self.filters += usize::from(was_empty);
        }
        previous
    }

    /// Removes `key`'s entry under `filter`, pruning nodes left empty.
    /// Returns the removed value.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (prefix, slot) = path(filter);
        let (value, emptied) = self.root.remove(levels(prefix), slot, key)?;
        self.len -= 1;
        self.filters -= usize::from(emptied);
        Some(value)
    }

    /// Returns the entry of `key` under `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let (prefix, slot) = path(filter);
        let mut node = &self.root;
        for level in levels(prefix) {
            node = node.child(level)?;
        }
        match slot {
            Slot::Exact => node.exact.get(key),
            Slot::Multi => node.multi()?.get(key),
        }
    }

    /// Calls `f(key, value)` for every entry whose filter matches `topic` (a
    /// topic name). Does not allocate. A key subscribed via several matching
    /// filters is visited once per filter (the caller merges).
    pub fn for_each_match(&self, topic: &str, f: impl FnMut(&K, &V)) {
        self.for_each_match_grouped(topic, || {}, f);
    }

    /// [`Trie::for_each_match`], calling `on_filter` before the entries of each matching
    /// filter, so a caller can tell whether all matches came from one filter (then no key
    /// can appear twice).
    pub fn for_each_match_grouped(
        &self,
        topic: &str,
        mut on_filter: impl FnMut(),
        mut f: impl FnMut(&K, &V),
    ) {
        let mut levels = topic.split('/');
        if topic.starts_with('$') {
            // [MQTT-4.7.2-1]: filters starting with a wildcard never match
            // topics starting with `$`, so skip the root's `#` and `+`.
            if let Some(child) = levels.next().and_then(|l| self.root.named_child(l)) {
                child.walk(levels, &mut f, &mut on_filter);
            }
        } else {
            self.root.walk(levels, &mut f, &mut on_filter);
        }
    }

    /// Number of `(filter, key)` entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct filters with at least one entry.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Number of nodes below the root (test helper for pruning).
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.root.count()
    }
}

impl<K, V> std::fmt::Debug for Trie<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trie")
            .field("len", &self.len)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V> Default for Trie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sorted keys of the entries matching `topic`.
    fn matches(trie: &Trie<u32, &'static str>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, _| out.push(*k));
        out.sort_unstable();
        out
    }

    /// Whether the single filter `filter` matches `topic`.
    fn is_match(filter: &str, topic: &str) -> bool {
        let mut trie = Trie::new();
        trie.insert(filter, 1u32, "");
        matches(&trie, topic) == [1]
    }

    /// Every named node sits in its parent's map (the key's 16 bytes, the node and a
    /// control byte per bucket), so each byte here costs about 1.6 per filter level:
    /// 10,000 idle clients with a filter each spend ~0.9 MB on the map of one level.
    #[test]
    fn a_node_is_small() {
        let node = std::mem::size_of::<Node<u64, [usize; 4]>>();
        assert!(node <= 32, "a trie node grew to {node} bytes");
        let entries = std::mem::size_of::<Entries<u64, [usize; 4]>>();
        assert!(entries <= 16, "an entry set grew to {entries} bytes");
    }

    #[test]
    fn exact_levels_and_empty_levels() {
        // §4.7.1.1: adjacent separators denote a zero-length level; levels are real.
        assert!(is_match("a/b", "a/b"));
        assert!(is_match("a//b", "a//b"));
        assert!(is_match("/a", "/a"));
        assert!(is_match("a/", "a/"));
        assert!(!is_match("a//b", "a/b"));
        assert!(!is_match("/a", "a"));
        assert!(!is_match("a/", "a"));
        assert!(!is_match("a", "a/"));
        assert!(!is_match("a/b", "a/b/c"));
        assert!(!is_match("a/b/c", "a/b"));
    }

    #[test]
    fn no_normalization_and_case_sensitive() {
        // [MQTT-4.7.3-4]: no normalization; §4.7.3: names and filters are case sensitive.
        assert!(!is_match("ACCOUNTS", "Accounts"));
        assert!(!is_match("a b", "a  b"));
        assert!(is_match("ümlaut/ü", "ümlaut/ü"));
        assert!(!is_match("a/./b", "a/b"));
    }

    #[test]
    fn single_level_wildcard() {
        // [MQTT-4.7.1-3]: `+` occupies one whole level, at any level of the filter.
        assert!(is_match("sport/tennis/+", "sport/tennis/player1"));
        assert!(is_match("sport/tennis/+", "sport/tennis/player2"));
        assert!(!is_match("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(is_match("+/tennis/+", "sport/tennis/x"));
        // §4.7.1.3: "sport/+" does not match "sport" but does match "sport/".
        assert!(!is_match("sport/+", "sport"));
        assert!(is_match("sport/+", "sport/"));
        // §4.7.1.3: "+/+" and "/+" match "/", "+" does not.
        assert!(is_match("+/+", "/"));
        assert!(is_match("/+", "/"));
        assert!(!is_match("+", "/"));
        assert!(is_match("+", "a"));
        assert!(is_match("a/+/c", "a//c"));
    }

    #[test]
    fn multi_level_wildcard() {
        // [MQTT-4.7.1-2]: `#` is last, alone or after a separator; it matches
        // the parent level and any number of child levels (§4.7.1.2).
        for topic in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(is_match("sport/tennis/player1/#", topic), "{topic}");
        }
        assert!(is_match("sport/#", "sport"));
        assert!(is_match("sport/#", "sport/"));
        assert!(!is_match("sport/#", "sports"));
        assert!(!is_match("sport/tennis/#", "sport"));
        assert!(is_match("+/tennis/#", "sport/tennis"));
        assert!(is_match("/#", "/"));
        assert!(is_match("/#", "/a/b"));
        assert!(!is_match("/#", "a"));
        // §4.7.1.2: "#" on its own receives every message (not `$` ones, below).
        for topic in ["a", "/", "a/b/c", "//"] {
            assert!(is_match("#", topic), "{topic}");
        }
    }

    #[test]
    fn dollar_topics() {
        // [MQTT-4.7.2-1]: filters starting with a wildcard don't match `$` topics.
        assert!(!is_match("#", "$SYS/x"));
        assert!(!is_match("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!is_match("+", "$SYS"));
        assert!(!is_match("+/#", "$SYS/a"));
        // §4.7.2: explicit `$` filters do match.
        assert!(is_match("$SYS/#", "$SYS/x"));
        assert!(is_match("$SYS/#", "$SYS"));
        assert!(is_match("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(is_match("$SYS", "$SYS"));
        // Only a leading `$` is special.
        assert!(is_match("#", "a/$SYS"));
        assert!(is_match("a/+", "a/$x"));
    }

    #[test]
    fn overlapping_filters_visit_once_per_filter() {
        let mut trie = Trie::new();
        for (i, f) in ["a/b", "a/+", "+/b", "a/#", "#", "+/+", "a/b/#", "a/c"]
            .iter()
            .enumerate()
        {
            trie.insert(f, i as u32, *f);
        }
        trie.insert("a/b", 100, "a/b");
        trie.insert("#", 100, "#");
        assert_eq!(matches(&trie, "a/b"), [0, 1, 2, 3, 4, 5, 6, 100, 100]);
        assert_eq!(matches(&trie, "$a/b"), Vec::<u32>::new());
        let mut seen = Vec::new();
        trie.for_each_match("a/c", |k, v| seen.push((*k, *v)));
        seen.sort_unstable();
        assert_eq!(
            seen,
            [
                (1, "a/+"),
                (3, "a/#"),
                (4, "#"),
                (5, "+/+"),
                (7, "a/c"),
                (100, "#")
            ]
        );
    }

    #[test]
    fn insert_replace_get_remove_prune() {
        let mut trie = Trie::new();
        assert!(trie.is_empty());
        assert_eq!(trie.insert("a/b/c", 1u32, "x"), None);
        assert_eq!(trie.insert("a/b/c", 1, "y"), Some("x"));
        assert_eq!(trie.insert("a/b/c", 2, "z"), None);
        assert_eq!(trie.insert("a/+/#", 1, "w"), None);
        assert_eq!(trie.insert("#", 3, "all"), None);
        assert_eq!(trie.insert("/#", 4, "slash"), None);
        assert_eq!((trie.len(), trie.filter_count()), (5, 4));
        assert_eq!(trie.get("a/b/c", &1), Some(&"y"));
        assert_eq!(trie.get("a/b/c", &3), None);
        assert_eq!(trie.get("a/b", &1), None);
        assert_eq!(trie.get("#", &3), Some(&"all"));
        assert_eq!(trie.get("/#", &3), None);
        assert_eq!(trie.get("/#", &4), Some(&"slash"));
        assert_eq!(trie.remove("a/b/c", &9), None);
        assert_eq!(trie.remove("a/b/d", &1), None);
        assert_eq!(trie.remove("a/b/c", &1), Some("y"));
        assert_eq!((trie.len(), trie.filter_count()), (4, 4));
        assert_eq!(trie.remove("a/b/c", &2), Some("z"));
        assert_eq!((trie.len(), trie.filter_count()), (3, 3));
        // "a/b/c" pruned down to "a", which still carries the "+" path.
        assert_eq!(trie.node_count(), 3);
        assert_eq!(trie.remove("a/+/#", &1), Some("w"));
        assert_eq!(trie.node_count(), 1);
        assert_eq!(trie.remove("#", &3), Some("all"));
        assert_eq!(trie.remove("/#", &4), Some("slash"));
        assert_eq!(trie.remove("/#", &4), None);
        assert_eq!(
            (trie.len(), trie.filter_count(), trie.node_count()),
            (0, 0, 0)
        );
        assert!(trie.is_empty());
        assert_eq!(matches(&trie, "a/b/c"), Vec::<u32>::new());
    }

    #[test]
    fn many_keys_on_one_filter() {
        const N: u32 = 100_000;
        let mut trie = Trie::default();
        for k in 0..N {
            assert_eq!(trie.insert("s/+/t", k, "v"), None);
        }
        assert_eq!((trie.len() as u32, trie.filter_count()), (N, 1));
        let mut count = 0;
        trie.for_each_match("s/x/t", |_, _| count += 1);
        assert_eq!(count, N);
        // Remove in an order that exercises swap_remove re-indexing.
        for k in (0..N).step_by(2).chain((1..N).step_by(2).rev()) {
            assert_eq!(trie.get("s/+/t", &k), Some(&"v"));
            assert_eq!(trie.remove("s/+/t", &k), Some("v"), "{k}");
            assert_eq!(trie.get("s/+/t", &k), None);
        }
        assert_eq!(
            (trie.len(), trie.filter_count(), trie.node_count()),
            (0, 0, 0)
        );
    }

    /// Naive reference matcher, written straight from §4.7.
    fn reference(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        for i in 0.. {
            if f.get(i) == Some(&"#") {
                return true;
            }
            match (f.get(i), t.get(i)) {
                (None, None) => return true,
                (Some(&"+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
        false
    }

    struct XorShift(u64);
    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn random_levels(rng: &mut XorShift, pool: &[&str]) -> String {
        let n = 1 + rng.below(4);
        let mut first = rng.pick(&["a", "b", "", "$SYS", "$x"]).to_string();
        if pool.contains(&"+") && rng.below(3) == 0 {
            first = "+".into();
        }
        (1..n).fold(first, |acc, _| acc + "/" + rng.pick(pool))
    }

    #[test]
    fn randomized_against_reference() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let filter_levels = ["a", "b", "", "+", "+", "$SYS"];
        let topic_levels = ["a", "b", "", "$SYS", "c"];
        let mut trie: Trie<u32, String> = Trie::new();
        let mut model: Vec<(String, u32)> = Vec::new();
        for round in 0..40 {
            // Churn: insert ~60 entries, remove ~30 (some absent).
            for _ in 0..60 {
                let mut filter = random_levels(&mut rng, &filter_levels);
                if rng.below(4) == 0 {
                    filter = if rng.below(8) == 0 {
                        "#".into()
                    } else {
                        filter + "/#"
                    };
                }
                let key = rng.below(20) as u32;
                let fresh = !model.contains(&(filter.clone(), key));
                assert_eq!(trie.insert(&filter, key, filter.clone()).is_none(), fresh);
                if fresh {
                    model.push((filter, key));
                }
            }
            for _ in 0..30 {
                if model.is_empty() || rng.below(5) == 0 {
                    assert_eq!(trie.remove("x/y/absent", &0), None);
                    continue;
                }
                let (filter, key) = model.swap_remove(rng.below(model.len()));
                assert_eq!(trie.remove(&filter, &key).as_deref(), Some(filter.as_str()));
            }
            assert_eq!(trie.len(), model.len());
            let mut distinct: Vec<&String> = model.iter().map(|(f, _)| f).collect();
            distinct.sort();
            distinct.dedup();
            assert_eq!(trie.filter_count(), distinct.len());
            for _ in 0..100 {
                let topic = random_levels(&mut rng, &topic_levels);
                let mut got = Vec::new();
                trie.for_each_match(&topic, |k, v| got.push((v.clone(), *k)));
                got.sort();
                let mut want: Vec<(String, u32)> = model
                    .iter()
                    .filter(|(f, _)| reference(f, &topic))
                    .cloned()
                    .collect();
                want.sort();
                assert_eq!(got, want, "round {round}, topic {topic:?}");
            }
        }
        for (filter, key) in model.drain(..) {
            assert!(trie.remove(&filter, &key).is_some());
        }
        assert_eq!(
            (trie.len(), trie.filter_count(), trie.node_count()),
            (0, 0, 0)
        );
    }
}
