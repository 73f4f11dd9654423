//! The incremental update from one [`Table`] to the next, as `nft -f` commands.
//!
//! [`diff_commands`] compares two tables and lists the [`Command`]s that turn the first into
//! the second in one transaction; [`diff`] writes them as `nft -f` input. Only what changed
//! is sent: elements added to and deleted from sets and maps that keep their definition,
//! new chains added, changed chains flushed and refilled, sets and chains that went away
//! deleted. The order keeps every reference valid at every step, as the kernel requires:
//!
//! 1. new sets and maps, then new chains (empty), so anything may refer to them;
//! 2. flush the chains that change or go away, and the chains using a set that must be
//!    created again (its type, flags, timeout or comment changed);
//! 3. delete the elements that go away or change; delete and re-create the base chains whose
//!    hook or priority changed and the sets that must be created again;
//! 4. add the new and changed elements, then the rules of every new or flushed chain;
//! 5. last, when nothing refers to them any more, delete the sets and then the chains that
//!    went away.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use netd_proxy::IpFamily;

use super::ast::{BaseChain, Element, Rule, Set, Table, Value, elements_str, family_str};

/// One `nft` command of an incremental update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `add set|map … { type …; }`: create a set from its definition (its elements are
    /// added by [`Command::AddElements`]).
    AddSet(Set),
    /// `delete set|map …`.
    DeleteSet {
        /// The set's name.
        name: String,
        /// Whether it is a map.
        map: bool,
    },
    /// `add chain …`, with its hook for a base chain.
    AddChain {
        /// The chain's name.
        name: String,
        /// Type, hook and priority of a base chain.
        base: Option<BaseChain>,
    },
    /// `flush chain …`: delete every rule of the chain.
    FlushChain(String),
    /// `delete chain …` (it must be empty and unreferenced).
    DeleteChain(String),
    /// `add rule …`: append a rule to a chain.
    AddRule {
        /// The chain.
        chain: String,
        /// The rule.
        rule: Rule,
    },
    /// `add element … { … }`.
    AddElements {
        /// The set or map.
        set: String,
        /// The elements.
        elements: Vec<Element>,
    },
    /// `delete element … { … }`, by key.
    DeleteElements {
        /// The set or map.
        set: String,
        /// The keys of the elements.
        keys: Vec<Vec<Value>>,
    },
}

impl Command {
    /// The command as one line of `nft -f` input for table `family name`.
    pub fn to_nft(&self, family: IpFamily, table: &str) -> String {
        let t = format!("{} {table}", family_str(family));
        match self {
            Command::AddSet(set) => {
                format!(
                    "add {} {t} {} {}",
                    set.keyword(),
                    set.name,
                    set.definition()
                )
            }
            Command::DeleteSet { name, map } => {
                format!("delete {} {t} {name}", if *map { "map" } else { "set" })
            }
            Command::AddChain { name, base: None } => format!("add chain {t} {name}"),
            Command::AddChain {
                name,
                base: Some(base),
            } => format!("add chain {t} {name} {{ {base} }}"),
            Command::FlushChain(name) => format!("flush chain {t} {name}"),
            Command::DeleteChain(name) => format!("delete chain {t} {name}"),
            Command::AddRule { chain, rule } => {
                format!("add rule {t} {chain} {}", rule.display(family))
            }
            Command::AddElements { set, elements } => {
                format!(
                    "add element {t} {set} {{ {} }}",
                    elements_str(elements.iter())
                )
            }
            Command::DeleteElements { set, keys } => format!(
                "delete element {t} {set} {{ {} }}",
                keys.iter()
                    .map(|k| k.iter().map(Value::display).collect::<Vec<_>>().join(" . "))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The `nft -f` input that turns `previous` (as loaded from [`Table::to_nft`]) into `next`
/// in one transaction; empty when they are equal.
///
/// A `next` of another family or name is another table: the update deletes `previous` and
/// loads `next` whole.
pub fn diff(previous: &Table, next: &Table) -> String {
    if previous.family != next.family || previous.name != next.name {
        return format!(
            "delete table {} {}\n{}",
            previous.family_str(),
            previous.name,
            next.to_nft()
        );
    }
    let mut out = String::new();
    for command in diff_commands(previous, next) {
        let _ = writeln!(out, "{}", command.to_nft(next.family, &next.name));
    }
    out
}

/// The commands that turn `previous` into `next`, two tables of the same family and name, in
/// the order described in the [module documentation](self).
pub fn diff_commands(previous: &Table, next: &Table) -> Vec<Command> {
    let mut commands = Vec::new();

    // Sets kept by name but with another definition are created again.
    let recreated: BTreeSet<&str> = next
        .sets
        .values()
        .filter(|s| {
            previous
                .sets
                .get(&s.name)
                .is_some_and(|p| !p.same_definition(s))
        })
        .map(|s| s.name.as_str())
        .collect();
    let rebased: BTreeSet<&str> = next
        .chains
        .values()
        .filter(|c| {
            previous
                .chains
                .get(&c.name)
                .is_some_and(|p| p.base != c.base)
        })
        .map(|c| c.name.as_str())
        .collect();

    // 1. New sets and chains.
    for set in next.sets.values() {
        if !previous.sets.contains_key(&set.name) {
            commands.push(Command::AddSet(set.without_elements()));
        }
    }
    for chain in next.chains.values() {
        if !previous.chains.contains_key(&chain.name) {
            commands.push(Command::AddChain {
                name: chain.name.clone(),
                base: chain.base,
            });
        }
    }

    // 2. Flush what changes, goes away, or uses a set created again.
    let mut flushed: BTreeSet<&str> = BTreeSet::new();
    for chain in previous.chains.values() {
        let uses_recreated = chain.set_refs().any(|s| recreated.contains(s));
        let changes = match next.chains.get(&chain.name) {
            None => true,
            Some(n) => n.rules != chain.rules || n.base != chain.base || uses_recreated,
        };
        if changes && !chain.rules.is_empty() {
            commands.push(Command::FlushChain(chain.name.clone()));
        }
        if changes {
            flushed.insert(chain.name.as_str());
        }
    }

    // 3. Elements that go away or change; sets and base chains created again.
    for set in next.sets.values() {
        let Some(prev) = previous.sets.get(&set.name) else {
            continue;
        };
        if recreated.contains(set.name.as_str()) {
            continue;
        }
        let keys: Vec<Vec<Value>> = prev
            .elements
            .iter()
            .filter(|(k, e)| set.elements.get(*k) != Some(*e))
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            commands.push(Command::DeleteElements {
                set: set.name.clone(),
                keys,
            });
        }
    }
    for name in &rebased {
        commands.push(Command::DeleteChain((*name).to_owned()));
        commands.push(Command::AddChain {
            name: (*name).to_owned(),
            base: next.chains.get(*name).and_then(|c| c.base),
        });
    }
    for name in &recreated {
        let Some(set) = next.sets.get(*name) else {
            continue;
        };
        commands.push(Command::DeleteSet {
            name: set.name.clone(),
            map: previous.sets.get(*name).is_some_and(Set::is_map),
        });
        commands.push(Command::AddSet(set.without_elements()));
    }

    // 4. New and changed elements, then rules.
    for set in next.sets.values() {
        let prev = previous
            .sets
            .get(&set.name)
            .filter(|_| !recreated.contains(set.name.as_str()));
        let elements: Vec<Element> = set
            .elements
            .iter()
            .filter(|(k, e)| prev.is_none_or(|p| p.elements.get(*k) != Some(*e)))
            .map(|(_, e)| e.clone())
            .collect();
        if !elements.is_empty() {
            commands.push(Command::AddElements {
                set: set.name.clone(),
                elements,
            });
        }
    }
    for chain in next.chains.values() {
        let fill =
            !previous.chains.contains_key(&chain.name) || flushed.contains(chain.name.as_str());
        if !fill {
            continue;
        }
        for rule in &chain.rules {
            commands.push(Command::AddRule {
                chain: chain.name.clone(),
                rule: rule.clone(),
            });
        }
    }

    // 5. What went away, once nothing refers to it.
    for set in previous.sets.values() {
        if !next.sets.contains_key(&set.name) {
            commands.push(Command::DeleteSet {
                name: set.name.clone(),
                map: set.is_map(),
            });
        }
    }
    for chain in previous.chains.values() {
        if !next.chains.contains_key(&chain.name) {
            commands.push(Command::DeleteChain(chain.name.clone()));
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use netd_testkit::Rng;
    use proptest::prelude::*;

    use super::*;
    use crate::nft::ast::{
        Chain, ChainType, DataType, Field, Hook, KeyType, MapRef, MapValue, Match, Priority,
        SetFlag, StandardPriority, Statement, Verdict,
    };

    /// The kernel's bookkeeping, as far as the order of commands goes: what a command
    /// refers to must exist, and what it deletes must be empty and unreferenced.
    fn apply(table: &mut Table, command: &Command) -> Result<(), String> {
        match command {
            Command::AddSet(set) => {
                if table.sets.contains_key(&set.name) {
                    return Err(format!("set {} exists", set.name));
                }
                table.add_set(set.clone());
            }
            Command::DeleteSet { name, map } => {
                let set = table.sets.get(name).ok_or(format!("no set {name}"))?;
                if set.is_map() != *map {
                    return Err(format!("{name} deleted as the wrong kind"));
                }
                if table
                    .chains
                    .values()
                    .any(|c| c.set_refs().any(|s| s == name))
                {
                    return Err(format!("set {name} is in use"));
                }
                table.sets.remove(name);
            }
            Command::AddChain { name, base } => {
                if table.chains.contains_key(name) {
                    return Err(format!("chain {name} exists"));
                }
                table.add_chain(Chain {
                    name: name.clone(),
                    base: *base,
                    rules: Vec::new(),
                });
            }
            Command::FlushChain(name) => {
                table
                    .chains
                    .get_mut(name)
                    .ok_or(format!("no chain {name}"))?
                    .rules
                    .clear();
            }
            Command::DeleteChain(name) => {
                let chain = table.chains.get(name).ok_or(format!("no chain {name}"))?;
                if !chain.rules.is_empty() {
                    return Err(format!("chain {name} is not empty"));
                }
                let referenced = table
                    .chains
                    .values()
                    .any(|c| c.chain_refs().any(|r| r == name))
                    || table
                        .sets
                        .values()
                        .any(|s| s.chain_refs().any(|r| r == name));
                if referenced {
                    return Err(format!("chain {name} is in use"));
                }
                table.chains.remove(name);
            }
            Command::AddRule { chain, rule } => {
                for target in rule.chain_refs() {
                    match table.chains.get(target) {
                        Some(c) if c.base.is_none() => {}
                        _ => return Err(format!("rule goes to missing chain {target}")),
                    }
                }
                for set in rule.set_refs() {
                    if !table.sets.contains_key(set) {
                        return Err(format!("rule uses missing set {set}"));
                    }
                }
                table
                    .chains
                    .get_mut(chain)
                    .ok_or(format!("no chain {chain}"))?
                    .push(rule.clone());
            }
            Command::AddElements { set, elements } => {
                for e in elements {
                    let target = match &e.value {
                        Some(MapValue::Verdict(v)) => v.chain(),
                        _ => None,
                    };
                    if let Some(target) = target.filter(|t| !table.chains.contains_key(*t)) {
                        return Err(format!("element goes to missing chain {target}"));
                    }
                }
                let s = table.sets.get_mut(set).ok_or(format!("no set {set}"))?;
                for e in elements {
                    if s.elements.insert(e.key.clone(), e.clone()).is_some() {
                        return Err(format!("element {:?} exists in {set}", e.key));
                    }
                }
            }
            Command::DeleteElements { set, keys } => {
                let s = table.sets.get_mut(set).ok_or(format!("no set {set}"))?;
                for k in keys {
                    s.elements
                        .remove(k)
                        .ok_or(format!("no element {k:?} in {set}"))?;
                }
            }
        }
        Ok(())
    }

    /// Applies the update to `prev` under the kernel's rules; it must give `next`.
    fn check(prev: &Table, next: &Table) -> Result<(), String> {
        let mut kernel = prev.clone();
        for command in diff_commands(prev, next) {
            apply(&mut kernel, &command)
                .map_err(|e| format!("{e} at {}", command.to_nft(next.family, &next.name)))?;
        }
        if &kernel != next {
            return Err(format!(
                "after the update:\n{}\nwanted:\n{}",
                kernel.to_nft(),
                next.to_nft()
            ));
        }
        Ok(())
    }

    /// Random decisions, a few of them changed by `tweak`: drawn with the same `rng` seed, a
    /// tweaked table is a small change of the untweaked one (a flag, an element, a rule).
    struct Draw {
        rng: Rng,
        tweak: Rng,
        percent: usize,
    }

    impl Draw {
        fn chance(&mut self, p: usize) -> bool {
            let d = self.rng.chance(p);
            if self.tweak.chance(self.percent) {
                !d
            } else {
                d
            }
        }

        fn below(&mut self, n: usize) -> usize {
            let v = self.rng.below(n);
            if self.tweak.chance(self.percent) {
                self.tweak.below(n)
            } else {
                v
            }
        }
    }

    fn ip(n: usize) -> Value {
        let last = u8::try_from(n % 8).unwrap_or(0);
        Value::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    /// A consistent table over small name pools (chains jump only to later chains, so there
    /// are no loops).
    fn random_table(d: &mut Draw) -> Table {
        let mut t = Table::new(netd_proxy::IpFamily::V4);
        let chains: Vec<&str> = ["c0", "c1", "c2", "c3", "c4"]
            .into_iter()
            .filter(|_| d.chance(70))
            .collect();
        for name in &chains {
            t.add_chain(Chain::regular(*name));
        }
        for name in ["b0", "b1"] {
            if !d.chance(70) {
                continue;
            }
            let hook = if d.chance(50) {
                Hook::Input
            } else {
                Hook::Output
            };
            let offset = if d.chance(50) { 0 } else { -10 };
            let base = BaseChain {
                kind: ChainType::Filter,
                hook,
                priority: Priority::plus(StandardPriority::Filter, offset),
            };
            t.add_chain(Chain::base(name, base));
        }
        for name in ["s0", "s1", "s2", "s3"] {
            if !d.chance(70) {
                continue;
            }
            let mut set = if d.chance(50) {
                Set::map(name, vec![KeyType::Ipv4Addr], DataType::Verdict)
            } else {
                Set::new(name, vec![KeyType::Ipv4Addr])
            };
            if d.chance(30) {
                set = set.with_flag(SetFlag::Timeout).with_timeout(60);
            }
            for _ in 0..4 {
                if !d.chance(60) {
                    continue;
                }
                let key = vec![ip(d.below(8))];
                if set.is_map() {
                    let verdict = match chains.len() {
                        0 => Verdict::Drop,
                        n => Verdict::Goto(chains[d.below(n)].to_owned()),
                    };
                    set.insert_mapping(key, MapValue::Verdict(verdict), None);
                } else {
                    let comment = d.chance(30).then(|| "c".to_owned());
                    set.insert(key, comment);
                }
            }
            t.add_set(set);
        }
        let sets: Vec<(String, bool)> = t
            .sets
            .values()
            .map(|s| (s.name.clone(), s.is_map()))
            .collect();
        let names: Vec<String> = t.chains.keys().cloned().collect();
        for name in names {
            let mut rules = Vec::new();
            for _ in 0..3 {
                let rule = match d.below(5) {
                    0 => match chains.iter().find(|c| **c > name.as_str()) {
                        Some(c) => Rule::new().verdict(Verdict::Jump((*c).to_owned())),
                        None => Rule::new().then(Statement::Counter),
                    },
                    1 if !sets.is_empty() => {
                        let (s, map) = &sets[d.below(sets.len())];
                        if *map {
                            Rule::new().then(Statement::Vmap {
                                fields: vec![Field::Daddr],
                                map: MapRef::Named(s.clone()),
                            })
                        } else {
                            Rule::new()
                                .matching(Match::in_set(vec![Field::Saddr], s.clone()))
                                .verdict(Verdict::Accept)
                        }
                    }
                    2 => Rule::new()
                        .matching(Match::eq(Field::Daddr, ip(d.below(8))))
                        .verdict(Verdict::Drop),
                    3 => continue,
                    _ => Rule::new().then(Statement::Counter),
                };
                rules.push(rule);
            }
            if let Some(c) = t.chains.get_mut(&name) {
                c.rules = rules;
            }
        }
        t
    }

    fn draw(seed: u64, tweak: u64, percent: usize) -> Table {
        random_table(&mut Draw {
            rng: Rng::new(seed),
            tweak: Rng::new(tweak),
            percent,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn update_turns_previous_into_next(seed in any::<u64>(), tweak in any::<u64>(), other in any::<u64>()) {
            let prev = draw(seed, tweak, 0);
            // A small change, and an unrelated table.
            for next in [draw(seed, tweak, 8), draw(other, tweak, 0)] {
                prop_assert_eq!(check(&prev, &next), Ok(()));
                prop_assert_eq!(check(&next, &prev), Ok(()));
            }
            prop_assert!(diff_commands(&prev, &prev).is_empty());
        }
    }

    #[test]
    fn an_endpoint_change_is_element_updates() {
        let mut prev = Table::new(netd_proxy::IpFamily::V4);
        let mut map = Set::map("m", vec![KeyType::Numgen], DataType::Verdict);
        map.insert_mapping(
            vec![Value::Int(0)],
            MapValue::Verdict(Verdict::Goto("ep-a".into())),
            None,
        );
        prev.add_set(map);
        prev.add_chain(Chain::regular("ep-a"));
        let mut next = prev.clone();
        next.chains.remove("ep-a");
        next.add_chain(Chain::regular("ep-b"));
        if let Some(m) = next.sets.get_mut("m") {
            m.insert_mapping(
                vec![Value::Int(0)],
                MapValue::Verdict(Verdict::Goto("ep-b".into())),
                None,
            );
        }
        assert_eq!(
            diff(&prev, &next),
            "add chain ip kube-netd ep-b\n\
             delete element ip kube-netd m { 0 }\n\
             add element ip kube-netd m { 0 : goto ep-b }\n\
             delete chain ip kube-netd ep-a\n"
        );
        assert_eq!(check(&prev, &next), Ok(()));
    }

    #[test]
    fn a_changed_set_definition_recreates_it_after_flushing_its_users() {
        let mut prev = Table::new(netd_proxy::IpFamily::V4);
        let mut set = Set::new("s", vec![KeyType::Ipv4Addr]);
        set.insert(vec![ip(1)], None);
        prev.add_set(set);
        let mut chain = Chain::regular("c");
        chain.push(
            Rule::new()
                .matching(Match::in_set(vec![Field::Saddr], "s"))
                .verdict(Verdict::Accept),
        );
        prev.add_chain(chain);
        let mut next = prev.clone();
        if let Some(s) = next.sets.get_mut("s") {
            s.timeout_secs = Some(5);
            s.flags.push(SetFlag::Timeout);
        }
        let text = diff(&prev, &next);
        let flush = text.find("flush chain ip kube-netd c").expect("flush");
        let delete = text.find("delete set ip kube-netd s").expect("delete");
        assert!(flush < delete, "{text}");
        assert_eq!(check(&prev, &next), Ok(()));
    }
}
