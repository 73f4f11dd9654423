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
            commands.push(Command::AddSet(without_elements(set)));
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
        commands.push(Command::AddSet(without_elements(set)));
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

fn without_elements(set: &Set) -> Set {
    Set {
        elements: Default::default(),
        ..set.clone()
    }
}
