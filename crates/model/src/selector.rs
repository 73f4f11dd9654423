//! Label selectors exactly as Kubernetes defines them (`metav1.LabelSelector`).
//!
//! `matchLabels` and every `matchExpressions` requirement are ANDed; an empty selector matches
//! everything. `NotIn` and `DoesNotExist` match objects that lack the key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde::Serialize;

use crate::field::{FieldError, FieldPath};
use crate::validation::{validate_label_key, validate_label_value};

/// A set of labels: ordered, so that everything printed from it is deterministic.
pub type Labels = BTreeMap<String, String>;

/// The automatic label every Namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One `matchExpressions` requirement.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator with its values.
    pub operator: Operator,
}

/// A selector operator. `In` and `NotIn` carry a non-empty set of values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Operator {
    /// The key is present and its value is one of these.
    In(BTreeSet<String>),
    /// The key is absent, or its value is none of these.
    NotIn(BTreeSet<String>),
    /// The key is present, whatever its value.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

/// A validated label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LabelSelector {
    /// `matchLabels`, as requirements of equality.
    pub match_labels: Labels,
    /// `matchExpressions`.
    pub expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector of equalities only, as a Service's `spec.selector` is.
    pub fn from_labels(labels: Labels) -> Self {
        Self {
            match_labels: labels,
            expressions: Vec::new(),
        }
    }

    /// Whether this selector matches every object.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.expressions.is_empty()
    }

    /// Whether a set of labels satisfies every term of the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| r.matches(labels))
    }

    /// Converts and validates an API selector; `path` locates it in its object.
    pub fn from_api(api: &meta::LabelSelector, path: &FieldPath) -> Result<Self, FieldError> {
        let mut match_labels = Labels::new();
        if let Some(ml) = &api.match_labels {
            let ml_path = path.child("matchLabels");
            for (k, v) in ml {
                validate_label_key(k, &ml_path)?;
                validate_label_value(v, &ml_path.key(k))?;
                match_labels.insert(k.clone(), v.clone());
            }
        }
        let mut expressions = Vec::new();
        for (i, e) in api.match_expressions.iter().flatten().enumerate() {
            let e_path = path.child("matchExpressions").index(i);
            expressions.push(Requirement::from_api(e, &e_path)?);
        }
        Ok(Self {
            match_labels,
            expressions,
        })
    }
}

impl Requirement {
    /// Whether a set of labels satisfies this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    fn from_api(
        api: &meta::LabelSelectorRequirement,
        path: &FieldPath,
    ) -> Result<Self, FieldError> {
        validate_label_key(&api.key, &path.child("key"))?;
        let values_path = path.child("values");
        let values: BTreeSet<String> = api.values.iter().flatten().cloned().collect();
        for (i, v) in api.values.iter().flatten().enumerate() {
            validate_label_value(v, &values_path.index(i))?;
        }
        let operator = match api.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    return Err(FieldError::required(values_path).with_reason_for_set_ops());
                }
                if api.operator == "In" {
                    Operator::In(values)
                } else {
                    Operator::NotIn(values)
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    return Err(FieldError::forbidden(
                        values_path,
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
                if api.operator == "Exists" {
                    Operator::Exists
                } else {
                    Operator::DoesNotExist
                }
            }
            other => {
                return Err(FieldError::not_supported(
                    path.child("operator"),
                    other,
                    &["In", "NotIn", "Exists", "DoesNotExist"],
                ));
            }
        };
        Ok(Self {
            key: api.key.clone(),
            operator,
        })
    }
}

impl FieldError {
    fn with_reason_for_set_ops(self) -> Self {
        FieldError::forbidden(
            self.path,
            "must be specified when `operator` is 'In' or 'NotIn'",
        )
    }
}

impl fmt::Display for LabelSelector {
    /// The `kubectl` string form, e.g. `app=web,tier in (a,b),!legacy`; `<none>` when empty
    /// is left to callers, since an empty selector means "everything" here.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.expressions {
            let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match &r.operator {
                Operator::In(vs) => format!("{} in ({})", r.key, join(vs)),
                Operator::NotIn(vs) => format!("{} notin ({})", r.key, join(vs)),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// A label selector string that does not parse, as `kubectl get -l` would refuse it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {input:?}: {reason}")]
pub struct SelectorParseError {
    /// The whole selector, as given.
    pub input: String,
    /// What is wrong, naming the offending term.
    pub reason: String,
}

impl std::str::FromStr for LabelSelector {
    type Err = SelectorParseError;

    /// Parses kubectl's selector syntax (`-l`): comma-separated requirements, each `key`,
    /// `!key`, `key=value` (or `==`), `key!=value`, `key in (a,b)` or `key notin (a,b)`.
    /// `!=` and `notin` also match objects without the key, as in Kubernetes. The empty
    /// string selects everything.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut selector = LabelSelector::everything();
        for term in split_terms(input) {
            let term = term.trim();
            let fail = |reason: String| SelectorParseError {
                input: input.to_owned(),
                reason,
            };
            if term.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(fail("empty requirement".to_owned()));
            }
            let (key, operator, value) = parse_term(term).map_err(fail)?;
            let path = FieldPath::new(term);
            validate_label_key(key, &path).map_err(|e| fail(e.to_string()))?;
            if let Some(v) = &value {
                validate_label_value(v, &path).map_err(|e| fail(e.to_string()))?;
            }
            match (operator, value) {
                (Operator::In(_), Some(v)) if !selector.match_labels.contains_key(key) => {
                    selector.match_labels.insert(key.to_owned(), v);
                }
                (Operator::In(_), Some(v)) => selector.expressions.push(Requirement {
                    key: key.to_owned(),
                    operator: Operator::In(BTreeSet::from([v])),
                }),
                (Operator::NotIn(_), Some(v)) => selector.expressions.push(Requirement {
                    key: key.to_owned(),
                    operator: Operator::NotIn(BTreeSet::from([v])),
                }),
                (Operator::In(vs) | Operator::NotIn(vs), None) if vs.is_empty() => {
                    return Err(fail(format!("{term:?}: a set needs at least one value")));
                }
                (operator, _) => {
                    for v in match &operator {
                        Operator::In(vs) | Operator::NotIn(vs) => vs.iter().collect(),
                        _ => Vec::new(),
                    } {
                        validate_label_value(v, &path).map_err(|e| fail(e.to_string()))?;
                    }
                    selector.expressions.push(Requirement {
                        key: key.to_owned(),
                        operator,
                    });
                }
            }
        }
        Ok(selector)
    }
}

/// Splits a selector at the commas that are not inside a `(...)` set.
fn split_terms(input: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&input[start..]);
    terms
}

/// One requirement: the key, the operator (sets filled for `in`/`notin`), and the single
/// value of `=`, `==` and `!=`.
fn parse_term(term: &str) -> Result<(&str, Operator, Option<String>), String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok((key.trim(), Operator::DoesNotExist, None));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok((
            key.trim(),
            Operator::NotIn(BTreeSet::new()),
            Some(value.trim().to_owned()),
        ));
    }
    if let Some((key, value)) = term.split_once('=') {
        let value = value.strip_prefix('=').unwrap_or(value);
        return Ok((
            key.trim(),
            Operator::In(BTreeSet::new()),
            Some(value.trim().to_owned()),
        ));
    }
    let Some((head, set)) = term.split_once('(') else {
        if term.split_whitespace().count() > 1 {
            return Err(format!(
                "{term:?}: expected `key`, `!key`, `key=value`, `key!=value`, `key in (...)` \
                 or `key notin (...)`"
            ));
        }
        return Ok((term, Operator::Exists, None));
    };
    let set = set
        .trim_end()
        .strip_suffix(')')
        .ok_or_else(|| format!("{term:?}: the set is not closed with ')'"))?;
    let values: BTreeSet<String> = set
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let words: Vec<&str> = head.split_whitespace().collect();
    let operator = match words.as_slice() {
        [_, "in"] => Operator::In(values),
        [_, "notin"] => Operator::NotIn(values),
        _ => {
            return Err(format!(
                "{term:?}: expected `key in (...)` or `key notin (...)`"
            ));
        }
    };
    Ok((words[0], operator, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> meta::LabelSelectorRequirement {
        meta::LabelSelectorRequirement {
            key: key.to_owned(),
            operator: op.to_owned(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| (*v).to_owned()).collect())
            },
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<meta::LabelSelectorRequirement>) -> LabelSelector {
        let api = meta::LabelSelector {
            match_labels: if ml.is_empty() {
                None
            } else {
                Some(labels(ml))
            },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        };
        LabelSelector::from_api(&api, &FieldPath::new("spec.podSelector")).expect("valid selector")
    }

    #[test]
    fn selector_table() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let none = Labels::new();
        let flag = labels(&[("flag", "")]);
        // (case, selector, labels, expected)
        let cases: Vec<(&str, LabelSelector, &Labels, bool)> = vec![
            (
                "empty selector matches everything",
                sel(&[], vec![]),
                &none,
                true,
            ),
            (
                "empty selector matches labelled",
                sel(&[], vec![]),
                &web,
                true,
            ),
            (
                "matchLabels equal",
                sel(&[("app", "web")], vec![]),
                &web,
                true,
            ),
            (
                "matchLabels different value",
                sel(&[("app", "web")], vec![]),
                &db,
                false,
            ),
            (
                "matchLabels missing key",
                sel(&[("app", "web")], vec![]),
                &none,
                false,
            ),
            (
                "matchLabels all must hold",
                sel(&[("app", "web"), ("tier", "back")], vec![]),
                &web,
                false,
            ),
            (
                "In present value",
                sel(&[], vec![req("app", "In", &["web", "api"])]),
                &web,
                true,
            ),
            (
                "In other value",
                sel(&[], vec![req("app", "In", &["api"])]),
                &web,
                false,
            ),
            (
                "In missing key",
                sel(&[], vec![req("app", "In", &["web"])]),
                &none,
                false,
            ),
            (
                "NotIn other value",
                sel(&[], vec![req("app", "NotIn", &["db"])]),
                &web,
                true,
            ),
            (
                "NotIn listed value",
                sel(&[], vec![req("app", "NotIn", &["web"])]),
                &web,
                false,
            ),
            (
                "NotIn missing key matches",
                sel(&[], vec![req("app", "NotIn", &["web"])]),
                &none,
                true,
            ),
            (
                "Exists present",
                sel(&[], vec![req("tier", "Exists", &[])]),
                &web,
                true,
            ),
            (
                "Exists missing",
                sel(&[], vec![req("tier", "Exists", &[])]),
                &db,
                false,
            ),
            (
                "DoesNotExist missing",
                sel(&[], vec![req("tier", "DoesNotExist", &[])]),
                &db,
                true,
            ),
            (
                "DoesNotExist present",
                sel(&[], vec![req("tier", "DoesNotExist", &[])]),
                &web,
                false,
            ),
            (
                "both fields ANDed, both hold",
                sel(&[("app", "web")], vec![req("tier", "In", &["front"])]),
                &web,
                true,
            ),
            (
                "both fields ANDed, expression fails",
                sel(&[("app", "web")], vec![req("tier", "NotIn", &["front"])]),
                &web,
                false,
            ),
            (
                "several expressions ANDed",
                sel(
                    &[],
                    vec![req("app", "Exists", &[]), req("tier", "DoesNotExist", &[])],
                ),
                &db,
                true,
            ),
            (
                "empty label value matched",
                sel(&[("flag", "")], vec![]),
                &flag,
                true,
            ),
        ];
        for (case, s, l, want) in cases {
            assert_eq!(s.matches(l), want, "{case}");
        }
    }

    #[test]
    fn invalid_selectors_are_rejected_with_paths() {
        let p = FieldPath::new("spec.podSelector");
        let bad_op = meta::LabelSelector {
            match_expressions: Some(vec![req("app", "Equals", &["x"])]),
            ..Default::default()
        };
        let e = LabelSelector::from_api(&bad_op, &p).expect_err("bad operator");
        assert_eq!(
            e.path.as_str(),
            "spec.podSelector.matchExpressions[0].operator"
        );

        let in_without_values = meta::LabelSelector {
            match_expressions: Some(vec![req("app", "In", &[])]),
            ..Default::default()
        };
        let e = LabelSelector::from_api(&in_without_values, &p).expect_err("In needs values");
        assert_eq!(
            e.path.as_str(),
            "spec.podSelector.matchExpressions[0].values"
        );

        let exists_with_values = meta::LabelSelector {
            match_expressions: Some(vec![req("app", "Exists", &["x"])]),
            ..Default::default()
        };
        let e = LabelSelector::from_api(&exists_with_values, &p).expect_err("Exists has no values");
        assert_eq!(
            e.path.as_str(),
            "spec.podSelector.matchExpressions[0].values"
        );

        let bad_value = meta::LabelSelector {
            match_labels: Some(labels(&[("app", "-web")])),
            ..Default::default()
        };
        let e = LabelSelector::from_api(&bad_value, &p).expect_err("bad label value");
        assert_eq!(e.path.as_str(), "spec.podSelector.matchLabels[app]");
    }

    #[test]
    fn display_is_kubectl_form() {
        let s = sel(
            &[("app", "web")],
            vec![
                req("tier", "In", &["b", "a"]),
                req("legacy", "DoesNotExist", &[]),
            ],
        );
        assert_eq!(s.to_string(), "app=web,tier in (a,b),!legacy");
    }

    #[test]
    fn kubectl_selector_strings_parse_with_kubernetes_semantics() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let none = Labels::new();
        let cases: [(&str, [bool; 3]); 10] = [
            ("", [true, true, true]),
            ("app=web", [true, false, false]),
            ("app==web", [true, false, false]),
            ("app!=web", [false, true, true]),
            ("app in (web, db)", [true, true, false]),
            ("app notin (web)", [false, true, true]),
            ("tier", [true, false, false]),
            ("!tier", [false, true, true]),
            ("app=web,tier=front", [true, false, false]),
            ("app in (web,db),!tier", [false, true, false]),
        ];
        for (input, want) in cases {
            let s: LabelSelector = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            let got = [s.matches(&web), s.matches(&db), s.matches(&none)];
            assert_eq!(got, want, "{input:?}");
        }
        assert_eq!(
            "app=web,tier in (a,b)"
                .parse::<LabelSelector>()
                .map(|s| s.to_string()),
            Ok("app=web,tier in (a,b)".to_owned())
        );
    }

    #[test]
    fn malformed_selector_strings_are_refused() {
        for input in [
            "app=web,",
            "app in ()",
            "app in (a",
            "app ni (a)",
            "a b",
            "-x=1",
            "a=b c",
        ] {
            let err = input.parse::<LabelSelector>().expect_err(input);
            assert_eq!(err.input, input);
        }
    }
}
