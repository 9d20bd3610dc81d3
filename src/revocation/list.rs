//! The revocation list: compact, exact for practical purposes, read without locks.
//!
//! Every identifier is stored as a keyed 64-bit SipHash-1-3 fingerprint of
//! (target, issuer scope, id). With a random 128-bit key per list (kept in the snapshot),
//! the chance that a given token collides with one of 10 M records is 10^7 / 2^64 ≈ 5e-13
//! per lookup, below the 1e-12 bound. Id records map fingerprint → `exp` (u32 seconds), rule
//! records fingerprint → (`revoked_at`, kind).
//!
//! Layout: 64 shards by fingerprint. A shard is an immutable array of (fingerprint, value)
//! sorted by fingerprint, exactly sized, plus a directory over the fingerprints' top bits
//! (about four entries per directory slot, one `u32` per slot): an id record takes 12 bytes
//! of array and ~1 byte of directory at any count, where a hash table's size doubled in
//! steps (15–30 bytes per record). A lookup reads one directory slot and binary-searches
//! the few entries it points at. The fingerprints are keyed, so nobody can crowd a slot.
//!
//! Concurrency: each shard sits in an `ArcSwap`. Readers load a shard (no lock, no wait);
//! writers serialise on one mutex and replace only the shards they touch (a merge of the
//! sorted batch into a copy), so an update costs 1/64 of the list and peak memory during an
//! update is the list plus one shard.

use std::hash::Hasher;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;
use siphasher::sip::SipHasher13;

use super::record::{Kind, Record, Target};

pub(crate) const SHARDS: usize = 64;

/// Entries per directory slot the directory aims at (one or two cache lines of ids).
const PER_SLOT: usize = 4;

/// A fingerprint kept as two `u32` halves, so an id entry `(Fp, u32 exp)` packs into 12
/// bytes instead of the 16 an `(u64, u32)` pair takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp([u32; 2]);

impl Fp {
    fn new(v: u64) -> Fp {
        Fp([v as u32, (v >> 32) as u32])
    }
    fn get(self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }
}

/// Rule value: `revoked_at` and the metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleValue {
    pub revoked_at: i64,
    pub kind: Kind,
}

/// One shard: entries sorted by fingerprint (no duplicates) and the directory over them.
pub(crate) struct Shard<V> {
    entries: Box<[(Fp, V)]>,
    /// `dir[s]..dir[s + 1]` holds the entries whose fingerprint's top `bits` bits are `s`.
    dir: Box<[u32]>,
    bits: u32,
}

impl<V: Copy> Shard<V> {
    /// From entries already sorted by fingerprint without duplicates.
    fn build(entries: Vec<(Fp, V)>) -> Shard<V> {
        let n = entries.len();
        // The smallest power of two of slots that keeps ≤ PER_SLOT entries per slot on
        // average; 0 bits (one slot) for a handful of entries.
        let bits = usize::BITS - (n / PER_SLOT).leading_zeros();
        let slots = 1usize << bits;
        // Count per slot, then prefix sums: dir[s] = entries in slots below s.
        let mut dir = vec![0u32; slots + 1];
        for (fp, _) in &entries {
            dir[Self::slot(bits, fp.get()) + 1] += 1;
        }
        for s in 1..=slots {
            dir[s] += dir[s - 1];
        }
        Shard {
            entries: entries.into_boxed_slice(),
            dir: dir.into_boxed_slice(),
            bits,
        }
    }

    fn slot(bits: u32, fp: u64) -> usize {
        fp.checked_shr(64 - bits).unwrap_or(0) as usize
    }

    fn get(&self, fp: u64) -> Option<V> {
        let slot = Self::slot(self.bits, fp);
        let run = &self.entries[self.dir[slot] as usize..self.dir[slot + 1] as usize];
        run.binary_search_by_key(&fp, |(f, _)| f.get())
            .ok()
            .map(|i| run[i].1)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, V)> + '_ {
        self.entries.iter().map(|(fp, v)| (fp.get(), *v))
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.entries) + std::mem::size_of_val(&*self.dir)
    }
}

/// Sorts a batch by fingerprint and folds duplicates with `merge`.
fn sorted_batch<V: Copy>(mut items: Vec<(Fp, V)>, merge: &impl Fn(V, V) -> V) -> Vec<(Fp, V)> {
    items.sort_unstable_by_key(|(fp, _)| fp.get());
    items.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = merge(kept.1, later.1);
        }
        same
    });
    items
}

struct Shards<V> {
    shards: Box<[ArcSwap<Shard<V>>]>,
}

impl<V: Copy> Shards<V> {
    fn new() -> Self {
        Shards::from_parts((0..SHARDS).map(|_| Vec::new()).collect(), &|a, _| a)
    }

    /// From one unsorted vector per shard (a snapshot being restored).
    fn from_parts(parts: Vec<Vec<(Fp, V)>>, merge: &impl Fn(V, V) -> V) -> Self {
        Shards {
            shards: parts
                .into_iter()
                .map(|p| ArcSwap::from_pointee(Shard::build(sorted_batch(p, merge))))
                .collect(),
        }
    }

    /// Shard by middle bits: the directory uses the top bits, which must stay uniform
    /// inside a shard.
    fn index(fp: u64) -> usize {
        ((fp >> 32) as usize) % SHARDS
    }

    fn get(&self, fp: u64) -> Option<V> {
        self.shards[Self::index(fp)].load().get(fp)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.load().entries.len()).sum()
    }

    /// Applies `(fp, value)` pairs; `merge(old, new)` decides the kept value. Returns the
    /// values of the fingerprints that were new. Callers hold the writer lock.
    fn upsert(&self, items: Vec<(u64, V)>, merge: impl Fn(V, V) -> V) -> Vec<V> {
        let mut by_shard: Vec<Vec<(Fp, V)>> = vec![Vec::new(); SHARDS];
        for (fp, v) in items {
            by_shard[Self::index(fp)].push((Fp::new(fp), v));
        }
        let mut added = Vec::new();
        for (i, items) in by_shard.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let batch = sorted_batch(items, &merge);
            let current = self.shards[i].load_full();
            // One merge of two sorted runs into an array sized for both: one allocation,
            // a sequential copy of the shard (1/64 of the list).
            let mut merged = Vec::with_capacity(current.entries.len() + batch.len());
            let old = &current.entries[..];
            let mut from = 0;
            for (fp, v) in batch {
                // Copy the run of old entries below this one in a block.
                let at = from + old[from..].partition_point(|(o, _)| o.get() < fp.get());
                merged.extend_from_slice(&old[from..at]);
                match old.get(at) {
                    Some((o, was)) if *o == fp => {
                        merged.push((fp, merge(*was, v)));
                        from = at + 1;
                    }
                    _ => {
                        merged.push((fp, v));
                        added.push(v);
                        from = at;
                    }
                }
            }
            merged.extend_from_slice(&old[from..]);
            drop(current);
            self.shards[i].store(Arc::new(Shard::build(merged)));
        }
        added
    }

    /// Removes entries for which `expired` holds; returns the removed values.
    fn prune(&self, expired: impl Fn(&V) -> bool) -> Vec<V> {
        let mut removed = Vec::new();
        for shard in self.shards.iter() {
            let current = shard.load_full();
            if !current.entries.iter().any(|(_, v)| expired(v)) {
                continue;
            }
            let kept = current.entries.iter().filter(|(_, v)| !expired(v)).count();
            let mut entries = Vec::with_capacity(kept);
            for e in current.entries.iter() {
                if expired(&e.1) {
                    removed.push(e.1);
                } else {
                    entries.push(*e);
                }
            }
            drop(current);
            shard.store(Arc::new(Shard::build(entries)));
        }
        removed
    }

    /// Bytes the arrays and directories hold.
    fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.load().bytes()).sum()
    }
}

/// Collects a restored snapshot's entries straight into their shards (12 bytes per id
/// record, no intermediate list), then sorts each shard once.
pub(crate) struct Builder {
    ids: Vec<Vec<(Fp, u32)>>,
    rules: Vec<Vec<(Fp, RuleValue)>>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            ids: (0..SHARDS).map(|_| Vec::new()).collect(),
            rules: (0..SHARDS).map(|_| Vec::new()).collect(),
        }
    }

    /// Room for `n` more ids in shard `i`, or spread over every shard (`None`), so that
    /// no shard's vector doubles on the way.
    pub fn reserve_ids(&mut self, shard: Option<usize>, n: usize) {
        reserve(&mut self.ids, shard, n);
    }

    pub fn reserve_rules(&mut self, shard: Option<usize>, n: usize) {
        reserve(&mut self.rules, shard, n);
    }

    pub fn id(&mut self, fp: u64, exp: u32) {
        self.ids[Shards::<u32>::index(fp)].push((Fp::new(fp), exp));
    }
    pub fn rule(&mut self, fp: u64, rule: RuleValue) {
        self.rules[Shards::<RuleValue>::index(fp)].push((Fp::new(fp), rule));
    }
    pub fn finish(self, key: (u64, u64)) -> RevocationList {
        let list = RevocationList {
            key,
            ids: Shards::from_parts(self.ids, &u32::max),
            rules: Shards::from_parts(self.rules, &later_rule),
            writer: Mutex::new(()),
            counts: Default::default(),
        };
        list.counts[Kind::Jti as usize].store(list.ids.len() as i64, Ordering::Relaxed);
        for shard in list.rules.shards.iter() {
            for (_, r) in shard.load().iter() {
                list.counts[r.kind as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        list
    }
}

fn reserve<T>(parts: &mut [Vec<T>], shard: Option<usize>, n: usize) {
    match shard {
        Some(i) => parts[i % SHARDS].reserve_exact(n),
        // Shards differ by about the square root of their share: an eighth more is plenty.
        None => parts
            .iter_mut()
            .for_each(|p| p.reserve_exact(n / SHARDS + n / SHARDS / 8 + 16)),
    }
}

/// Of two rule values for one fingerprint, the later `revoked_at` wins.
fn later_rule(a: RuleValue, b: RuleValue) -> RuleValue {
    if b.revoked_at > a.revoked_at { b } else { a }
}

/// The fingerprints of one token (see [`RevocationList::fingerprints`]).
/// Absent identifiers are 0 (a real fingerprint is never 0, see `fp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFingerprints {
    ids: [u64; 4],
    rules: [u64; 6],
}

/// What a token offers to the list.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub iss: &'a str,
    /// The token's issuer has `profile = "wso2"`: WSO2 records apply.
    pub wso2: bool,
    pub jti: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub client: Option<&'a str>,
    pub entity_id: Option<&'a str>,
    /// The signature segment (WSO2 records may name it instead of the jti).
    pub signature: &'a str,
    /// For ECDSA: the other valid encoding of the same signature, (r, n − s), base64url.
    /// Whoever holds a token can compute it, and it verifies just as well, so a record
    /// naming either encoding must catch both.
    pub signature_twin: Option<&'a str>,
    pub iat: Option<i64>,
}

pub struct RevocationList {
    key: (u64, u64),
    ids: Shards<u32>,
    rules: Shards<RuleValue>,
    writer: Mutex<()>,
    counts: [AtomicI64; 3],
}

impl RevocationList {
    /// An empty list with a fresh random fingerprint key.
    pub fn new() -> RevocationList {
        let mut k = [0u8; 16];
        // A failing system RNG leaves a zero key: still collision-free in practice (the
        // inputs are key-manager-signed), only not secret.
        let _ = aws_lc_rs::rand::fill(&mut k);
        let (a, b) = k.split_at(8);
        RevocationList::with_key((
            u64::from_le_bytes(a.try_into().unwrap_or_default()),
            u64::from_le_bytes(b.try_into().unwrap_or_default()),
        ))
    }

    pub fn with_key(key: (u64, u64)) -> RevocationList {
        RevocationList {
            key,
            ids: Shards::new(),
            rules: Shards::new(),
            writer: Mutex::new(()),
            counts: Default::default(),
        }
    }

    pub fn key(&self) -> (u64, u64) {
        self.key
    }

    fn fp(&self, target: Target, scope: &str, id: &str) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write_u8(target.tag());
        h.write(scope.as_bytes());
        h.write_u8(0xff); // never inside UTF-8: separates scope from id
        h.write(id.as_bytes());
        // 0 marks "absent" in `TokenFingerprints`; mapping it to 1 adds a 2^-64 match.
        h.finish().max(1)
    }

    /// Records held, per kind.
    pub fn count(&self, kind: Kind) -> i64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.ids.len() + self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the shards' arrays and directories (excluding allocator overhead).
    pub fn table_bytes(&self) -> usize {
        self.ids.bytes() + self.rules.bytes()
    }

    /// Merges records (a revocation is never undone: later `exp`/`revoked_at` win).
    /// Returns how many were new.
    pub fn apply(&self, records: &[Record]) -> usize {
        let mut ids = Vec::new();
        let mut rules = Vec::new();
        for r in records {
            match r {
                Record::Id { target, id, exp } => {
                    let exp = (*exp).clamp(0, i64::from(u32::MAX)) as u32;
                    ids.push((self.fp(*target, "", id), exp));
                }
                Record::Rule {
                    target,
                    id,
                    iss,
                    revoked_at,
                } => rules.push((
                    self.fp(*target, iss.as_deref().unwrap_or(""), id),
                    RuleValue {
                        revoked_at: *revoked_at,
                        kind: target.kind(),
                    },
                )),
            }
        }
        self.insert_raw(ids, rules)
    }

    /// Inserts fingerprinted entries as they are.
    fn insert_raw(&self, ids: Vec<(u64, u32)>, rules: Vec<(u64, RuleValue)>) -> usize {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let new_ids = self.ids.upsert(ids, u32::max);
        self.counts[Kind::Jti as usize].fetch_add(new_ids.len() as i64, Ordering::Relaxed);
        let new_rules = self.rules.upsert(rules, later_rule);
        for r in &new_rules {
            self.counts[r.kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        new_ids.len() + new_rules.len()
    }

    /// Whether the token is revoked. A rule that matches a token without `iat` revokes it.
    pub fn is_revoked(&self, t: &Facts<'_>) -> bool {
        self.is_revoked_fps(&self.fingerprints(t), t.iat)
    }

    /// Every fingerprint a token can be matched by. They depend only on the token and the
    /// list's key, so a verified token computes them once and its cache hits reuse them.
    pub fn fingerprints(&self, t: &Facts<'_>) -> TokenFingerprints {
        let fp = |target, scope, id: Option<&str>| id.map_or(0, |id| self.fp(target, scope, id));
        let wso2 = |target, id: Option<&str>| if t.wso2 { fp(target, "", id) } else { 0 };
        let signature = (!t.signature.is_empty()).then_some(t.signature);
        TokenFingerprints {
            ids: [
                fp(Target::Jti, "", t.jti),
                wso2(Target::Wso2Token, t.jti),
                wso2(Target::Wso2Token, signature),
                wso2(Target::Wso2Token, t.signature_twin),
            ],
            rules: [
                fp(Target::Subject, "", t.sub),
                fp(Target::Subject, t.iss, t.sub),
                fp(Target::Client, "", t.client),
                fp(Target::Client, t.iss, t.client),
                wso2(Target::Wso2Client, t.client),
                wso2(Target::Wso2Entity, t.entity_id),
            ],
        }
    }

    /// The lookup itself: a handful of lock-free table probes.
    pub fn is_revoked_fps(&self, fps: &TokenFingerprints, iat: Option<i64>) -> bool {
        fps.ids
            .iter()
            .filter(|fp| **fp != 0)
            .any(|fp| self.ids.get(*fp).is_some())
            || fps.rules.iter().filter(|fp| **fp != 0).any(|fp| {
                self.rules
                    .get(*fp)
                    .is_some_and(|r| iat.is_none_or(|iat| iat <= r.revoked_at))
            })
    }

    /// Drops id records once `exp + leeway` has passed and rules once
    /// `revoked_at + max_lifetime + leeway` has: nothing they match can still be valid.
    /// Returns the number pruned per kind.
    pub fn prune(&self, now: i64, leeway: i64, max_lifetime: i64) -> [u64; 3] {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut pruned = [0u64; 3];
        let ids = self.ids.prune(|exp| i64::from(*exp) + leeway < now);
        pruned[Kind::Jti as usize] = ids.len() as u64;
        for r in self
            .rules
            .prune(|r| r.revoked_at.saturating_add(max_lifetime + leeway) < now)
        {
            pruned[r.kind as usize] += 1;
        }
        for k in Kind::ALL {
            self.counts[k as usize].fetch_sub(pruned[k as usize] as i64, Ordering::Relaxed);
        }
        pruned
    }

    /// Id shard `i` (of [`SHARDS`]) as it stands now, for the snapshot.
    pub(crate) fn id_shard(&self, i: usize) -> Arc<Shard<u32>> {
        self.ids.shards[i].load_full()
    }

    /// Rule shard `i` (of [`SHARDS`]) as it stands now, for the snapshot.
    pub(crate) fn rule_shard(&self, i: usize) -> Arc<Shard<RuleValue>> {
        self.rules.shards[i].load_full()
    }
}

impl Default for RevocationList {
    fn default() -> Self {
        RevocationList::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>() -> Facts<'a> {
        Facts {
            iss: "https://km",
            wso2: false,
            jti: Some("j1"),
            sub: Some("alice"),
            client: Some("app"),
            entity_id: Some("uuid-alice"),
            signature: "sig",
            signature_twin: None,
            iat: Some(1000),
        }
    }

    fn rule(target: Target, id: &str, iss: Option<&str>, t: i64) -> Record {
        Record::Rule {
            target,
            id: id.into(),
            iss: iss.map(Into::into),
            revoked_at: t,
        }
    }

    #[test]
    fn jti_records_match_exactly() {
        let l = RevocationList::new();
        assert!(!l.is_revoked(&facts()));
        l.apply(&[Record::Id {
            target: Target::Jti,
            id: "j2".into(),
            exp: 5000,
        }]);
        assert!(!l.is_revoked(&facts()));
        l.apply(&[Record::Id {
            target: Target::Jti,
            id: "j1".into(),
            exp: 5000,
        }]);
        assert!(l.is_revoked(&facts()));
        assert_eq!(l.count(Kind::Jti), 2);
    }

    #[test]
    fn rules_revoke_up_to_and_including_revoked_at() {
        let l = RevocationList::new();
        l.apply(&[rule(Target::Subject, "alice", None, 999)]);
        assert!(!l.is_revoked(&facts()), "iat 1000 > revoked_at 999");
        l.apply(&[rule(Target::Subject, "alice", None, 1000)]);
        assert!(l.is_revoked(&facts()), "iat == revoked_at is revoked");
        let no_iat = Facts {
            iat: None,
            ..facts()
        };
        assert!(
            l.is_revoked(&no_iat),
            "a matching rule revokes a token without iat"
        );
        assert_eq!(l.count(Kind::Subject), 1, "same rule, later time: merged");
    }

    #[test]
    fn issuer_scope_is_respected() {
        let l = RevocationList::new();
        l.apply(&[rule(Target::Client, "app", Some("https://other"), 2000)]);
        assert!(!l.is_revoked(&facts()));
        l.apply(&[rule(Target::Client, "app", Some("https://km"), 2000)]);
        assert!(l.is_revoked(&facts()));
    }

    #[test]
    fn wso2_records_apply_to_wso2_issuers_only() {
        let l = RevocationList::new();
        l.apply(&[
            Record::Id {
                target: Target::Wso2Token,
                id: "sig".into(),
                exp: 9000,
            },
            rule(Target::Wso2Entity, "uuid-bob", None, 2000),
        ]);
        assert!(
            !l.is_revoked(&facts()),
            "generic issuer ignores WSO2 records"
        );
        let w = Facts {
            wso2: true,
            ..facts()
        };
        assert!(
            l.is_revoked(&w),
            "jwt_signature matches the signature segment"
        );
        let w2 = Facts {
            wso2: true,
            signature: "other",
            signature_twin: None,
            jti: Some("j1"),
            ..facts()
        };
        assert!(!l.is_revoked(&w2));
        l.apply(&[Record::Id {
            target: Target::Wso2Token,
            id: "j1".into(),
            exp: 9000,
        }]);
        assert!(l.is_revoked(&w2), "jwt_signature matches the jti");

        let l = RevocationList::new();
        l.apply(&[rule(Target::Wso2Entity, "uuid-alice", None, 2000)]);
        assert!(l.is_revoked(&Facts {
            wso2: true,
            ..facts()
        }));
        let legacy = Facts {
            wso2: true,
            entity_id: None,
            ..facts()
        };
        assert!(
            !l.is_revoked(&legacy),
            "no entity_id: subject rules do not apply"
        );
    }

    #[test]
    fn pruning_waits_for_everything_matched_to_expire() {
        let l = RevocationList::new();
        l.apply(&[
            Record::Id {
                target: Target::Jti,
                id: "j1".into(),
                exp: 5000,
            },
            rule(Target::Client, "app", None, 1000),
        ]);
        // Rule: revoked_at 1000 + max lifetime 3600 + leeway 30.
        assert_eq!(
            l.prune(4630, 30, 3600),
            [0, 0, 0],
            "a token it matches may still live"
        );
        assert_eq!(l.prune(4631, 30, 3600), [0, 0, 1]);
        assert_eq!(l.count(Kind::Client), 0);
        // Id: exp 5000 + leeway 30.
        assert_eq!(
            l.prune(5030, 30, 3600),
            [0, 0, 0],
            "exp + leeway not yet passed"
        );
        assert_eq!(l.prune(5031, 30, 3600), [1, 0, 0]);
        assert_eq!(l.count(Kind::Jti), 0);
        assert!(l.is_empty());
    }

    #[test]
    fn fingerprints_are_keyed() {
        let a = RevocationList::with_key((1, 2));
        let b = RevocationList::with_key((3, 4));
        assert_ne!(a.fp(Target::Jti, "", "x"), b.fp(Target::Jti, "", "x"));
        assert_ne!(a.fp(Target::Jti, "", "x"), a.fp(Target::Wso2Token, "", "x"));
        assert_ne!(
            a.fp(Target::Subject, "i", "x"),
            a.fp(Target::Subject, "", "ix")
        );
    }

    /// The sorted layout against a plain map, through batches with duplicates, shard
    /// sizes from empty to thousands (every directory width), and pruning.
    #[test]
    fn sorted_shards_agree_with_a_map() {
        let list = RevocationList::with_key((7, 8));
        let mut model = std::collections::HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut all = Vec::new();
        for batch in [1usize, 3, 60, 500, 5_000, 40_000] {
            let mut ids = Vec::new();
            for k in 0..batch {
                // Every fifth entry repeats an earlier fingerprint with another exp.
                let fp = if k % 5 == 4 && !all.is_empty() {
                    all[(next() as usize) % all.len()]
                } else {
                    next().max(1)
                };
                let exp = (next() % 1000) as u32;
                ids.push((fp, exp));
                all.push(fp);
                let e = model.entry(fp).or_insert(exp);
                *e = (*e).max(exp);
            }
            list.insert_raw(ids, Vec::new());
            assert_eq!(list.ids.len(), model.len(), "after a batch of {batch}");
            for (fp, exp) in &model {
                assert_eq!(list.ids.get(*fp), Some(*exp));
            }
            for _ in 0..1000 {
                let fp = next();
                assert_eq!(list.ids.get(fp), model.get(&fp).copied());
            }
        }
        assert_eq!(list.count(Kind::Jti), model.len() as i64);
        let pruned = list.prune(500, 0, 0);
        model.retain(|_, exp| *exp >= 500);
        assert_eq!(list.ids.len(), model.len());
        assert_eq!(
            pruned[Kind::Jti as usize] as usize,
            all.iter().collect::<std::collections::HashSet<_>>().len() - model.len()
        );
        for fp in &all {
            assert_eq!(list.ids.get(*fp), model.get(fp).copied());
        }
        // About 12 bytes of array and one of directory per id record.
        let per_record = list.ids.bytes() as f64 / model.len() as f64;
        assert!(
            (12.0..14.5).contains(&per_record),
            "{per_record} bytes per record"
        );
    }
}
