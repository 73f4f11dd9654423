//! ipsets as data: each set's definition and members ([`IpSet`]), and a Node's sets
//! ([`IpSets`]) written as `ipset restore -exist` input in full ([`IpSets::full_input`]) or
//! as the change from what was applied last ([`IpSets::delta_input`]).
//!
//! The full form refills every set through a scratch set swapped in, so no set the kernel
//! matches against is seen half-filled. The delta form keeps that recipe only for a set that
//! is new or whose definition changed; an existing set gains its new members first and then
//! loses those gone, so a member in both the old and the new set is never missing, and an
//! unchanged set is not written at all (kube-proxy's IPVS mode likewise writes only the
//! entries that changed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use netd_proxy::IpFamily;

/// What `ipset create` takes after the name: the type, the address family (none for a
/// `bitmap:port`) and the type's options.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetDefinition {
    /// The type as `ipset` spells it (`hash:ip`, `bitmap:port`).
    pub kind: &'static str,
    /// The address family of a `hash:*` set.
    pub family: Option<IpFamily>,
    /// The rest of the `create` line (`hashsize 1024 maxelem 65536`, `range 0-65535`).
    pub options: &'static str,
}

impl fmt::Display for SetDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind)?;
        match self.family {
            Some(IpFamily::V4) => f.write_str(" family inet")?,
            Some(IpFamily::V6) => f.write_str(" family inet6")?,
            None => {}
        }
        write!(f, " {}", self.options)
    }
}

/// One ipset: its name, the scratch set a full write fills before the swap, its definition
/// and its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpSet {
    /// The set's name.
    pub name: String,
    /// The scratch set its members are loaded into before being swapped in.
    pub scratch: String,
    /// What it is created as.
    pub definition: SetDefinition,
    /// The members as `ipset add` spells them, in the renderer's order: sorted by the
    /// entries' own order and without duplicates.
    pub members: Vec<String>,
}

impl IpSet {
    /// The set's full recipe: both sets created if missing, the scratch set flushed and
    /// filled, swapped in and destroyed.
    fn write_full(&self, out: &mut String) {
        for n in [&self.name, &self.scratch] {
            let _ = writeln!(out, "create {n} {}", self.definition);
        }
        let _ = writeln!(out, "flush {}", self.scratch);
        for m in &self.members {
            let _ = writeln!(out, "add {} {m}", self.scratch);
        }
        let _ = writeln!(out, "swap {} {}", self.scratch, self.name);
        let _ = writeln!(out, "destroy {}", self.scratch);
    }

    /// The change from `applied` (the same set as last written, same definition): new
    /// members added, then those gone deleted.
    fn write_delta(&self, applied: &IpSet, out: &mut String) {
        let old: BTreeSet<&str> = applied.members.iter().map(String::as_str).collect();
        let new: BTreeSet<&str> = self.members.iter().map(String::as_str).collect();
        for m in self.members.iter().filter(|m| !old.contains(m.as_str())) {
            let _ = writeln!(out, "add {} {m}", self.name);
        }
        for m in applied.members.iter().filter(|m| !new.contains(m.as_str())) {
            let _ = writeln!(out, "del {} {m}", self.name);
        }
    }
}

/// A Node's ipsets, in the order they are written (each renderer's order, families and
/// back ends one after the other).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpSets {
    sets: Vec<IpSet>,
}

impl IpSets {
    /// No sets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `set` after those already here.
    pub fn push(&mut self, set: IpSet) {
        self.sets.push(set);
    }

    /// Adds `other`'s sets after those already here.
    pub fn append(&mut self, other: IpSets) {
        self.sets.extend(other.sets);
    }

    /// Whether there is no set.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The sets, in order.
    pub fn iter(&self) -> impl Iterator<Item = &IpSet> {
        self.sets.iter()
    }

    /// The `ipset restore -exist` input that writes every set whole: each created if
    /// missing, then refilled through a scratch set swapped in (what `kube-netd render`
    /// prints, and what a full sync applies).
    pub fn full_input(&self) -> String {
        let mut out = String::new();
        for set in &self.sets {
            set.write_full(&mut out);
        }
        out
    }

    /// The `ipset restore -exist` input that turns `applied` (what the kernel was last
    /// given) into these sets: a set that is new or has another definition written whole as
    /// in [`full_input`](Self::full_input); an existing one with its new members added,
    /// then those gone deleted; an unchanged one not at all. Sets in `applied` only are left
    /// alone (the caller prunes them once no rule refers to them).
    pub fn delta_input(&self, applied: &IpSets) -> String {
        let applied: BTreeMap<&str, &IpSet> =
            applied.sets.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut out = String::new();
        for set in &self.sets {
            match applied.get(set.name.as_str()) {
                Some(old) if old.definition == set.definition => set.write_delta(old, &mut out),
                _ => set.write_full(&mut out),
            }
        }
        out
    }
}

impl FromIterator<IpSet> for IpSets {
    fn from_iter<I: IntoIterator<Item = IpSet>>(iter: I) -> Self {
        Self {
            sets: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HASH_IP: SetDefinition = SetDefinition {
        kind: "hash:ip",
        family: Some(IpFamily::V4),
        options: "hashsize 1024 maxelem 65536",
    };

    fn set(name: &str, definition: SetDefinition, members: &[&str]) -> IpSet {
        IpSet {
            name: name.to_owned(),
            scratch: format!("{name}-N"),
            definition,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn full_input_refills_every_set_through_a_swap() {
        let sets: IpSets = [
            set("A", HASH_IP, &["10.0.0.1", "10.0.0.2"]),
            set(
                "P",
                SetDefinition {
                    kind: "bitmap:port",
                    family: None,
                    options: "range 0-65535",
                },
                &[],
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            sets.full_input(),
            "create A hash:ip family inet hashsize 1024 maxelem 65536\n\
             create A-N hash:ip family inet hashsize 1024 maxelem 65536\n\
             flush A-N\n\
             add A-N 10.0.0.1\n\
             add A-N 10.0.0.2\n\
             swap A-N A\n\
             destroy A-N\n\
             create P bitmap:port range 0-65535\n\
             create P-N bitmap:port range 0-65535\n\
             flush P-N\n\
             swap P-N P\n\
             destroy P-N\n"
        );
    }

    #[test]
    fn delta_adds_before_it_deletes_and_skips_unchanged_sets() {
        let before: IpSets = [
            set("A", HASH_IP, &["10.0.0.1", "10.0.0.2"]),
            set("B", HASH_IP, &["10.0.0.9"]),
        ]
        .into_iter()
        .collect();
        let after: IpSets = [
            set("A", HASH_IP, &["10.0.0.2", "10.0.0.3"]),
            set("B", HASH_IP, &["10.0.0.9"]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            after.delta_input(&before),
            "add A 10.0.0.3\ndel A 10.0.0.1\n"
        );
        assert_eq!(after.delta_input(&after), "");
    }

    #[test]
    fn a_new_set_or_one_with_another_definition_is_written_whole() {
        let before: IpSets = [set("A", HASH_IP, &["10.0.0.1"])].into_iter().collect();
        let bigger = SetDefinition {
            options: "hashsize 1024 maxelem 1048576",
            ..HASH_IP
        };
        let redefined: IpSets = [set("A", bigger, &["10.0.0.1"])].into_iter().collect();
        assert_eq!(
            redefined.delta_input(&before),
            redefined.full_input(),
            "same members, other options"
        );
        let more: IpSets = [
            set("A", HASH_IP, &["10.0.0.1"]),
            set("N", HASH_IP, &["10.0.0.5"]),
        ]
        .into_iter()
        .collect();
        let only_new: IpSets = [set("N", HASH_IP, &["10.0.0.5"])].into_iter().collect();
        assert_eq!(more.delta_input(&before), only_new.full_input());
    }

    /// A kernel's sets as `ipset restore -exist` leaves them, for the lines these inputs use.
    fn restore(kernel: &mut BTreeMap<String, BTreeSet<String>>, input: &str) {
        for line in input.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["create", name, ..] => {
                    kernel.entry((*name).to_owned()).or_default();
                }
                ["flush", name] => kernel.get_mut(*name).expect("flushed set exists").clear(),
                ["add", name, member] => {
                    let set = kernel.get_mut(*name).expect("set to add to exists");
                    set.insert((*member).to_owned());
                }
                ["del", name, member] => {
                    let set = kernel.get_mut(*name).expect("set to delete from exists");
                    set.remove(*member);
                }
                ["swap", a, b] => {
                    let x = kernel.remove(*a).expect("swapped set exists");
                    let y = kernel.remove(*b).expect("swapped set exists");
                    kernel.insert((*a).to_owned(), y);
                    kernel.insert((*b).to_owned(), x);
                }
                ["destroy", name] => {
                    kernel.remove(*name);
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
    }

    /// Up to three sets named A, B, C, each with some of eight members.
    fn sets() -> impl Strategy<Value = IpSets> {
        proptest::collection::btree_map(
            prop::sample::select(vec!["A", "B", "C"]),
            proptest::collection::btree_set(0u8..8, 0..8),
            0..=3,
        )
        .prop_map(|sets| {
            sets.into_iter()
                .map(|(name, members)| {
                    let members: Vec<String> =
                        members.iter().map(|m| format!("10.0.0.{m}")).collect();
                    let members: Vec<&str> = members.iter().map(String::as_str).collect();
                    set(name, HASH_IP, &members)
                })
                .collect()
        })
    }

    fn members(sets: &IpSets) -> BTreeMap<String, BTreeSet<String>> {
        sets.iter()
            .map(|s| (s.name.clone(), s.members.iter().cloned().collect()))
            .collect()
    }

    proptest! {
        #[test]
        fn full_then_delta_leaves_exactly_the_new_members(a in sets(), b in sets()) {
            let mut kernel = BTreeMap::new();
            restore(&mut kernel, &a.full_input());
            prop_assert_eq!(&kernel, &members(&a));
            restore(&mut kernel, &b.delta_input(&a));
            // Sets of `a` only stay (pruning is the caller's); every set of `b` is exact.
            let mut want = members(&a);
            want.extend(members(&b));
            prop_assert_eq!(kernel, want);
        }
    }
}
