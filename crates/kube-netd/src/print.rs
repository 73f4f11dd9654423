//! kubectl-style output of a resolved cluster: tables (`-o wide` adds columns), YAML, JSON
//! and `-o name`, for kubectl's argument forms (`KIND [NAME...]`, `KIND,KIND`, `KIND/NAME...`)
//! and `-l` selectors.
//!
//! Tables follow kubectl's layout: upper-case headers, columns separated by three spaces,
//! `<none>` for empty cells, a NAMESPACE column first with `-A`, and `kind/name` with blank
//! lines between kinds when several are shown (`get all`, `get svc,po`). A listing as YAML or
//! JSON is always a `List`; only one object asked for by name prints bare. The AGE column is
//! left out: the embedded control plane has no clock, so every age would read `<unknown>`.

use std::fmt::Write as _;

use anyhow::Context as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use netd_model::{ClusterState, Kind, LabelSelector, Labels, Object, ObjectId};

/// Output format, as `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table.
    Table,
    /// A table with more columns.
    Wide,
    /// The objects as YAML: a `List` when a kind is listed, the object for `get KIND NAME`.
    Yaml,
    /// The objects as JSON: a `List` when a kind is listed, the object for `get KIND NAME`.
    Json,
    /// `kind/name` per object, as `kubectl get -o name` (e.g. `pod/db`).
    Name,
}

/// Output format of commands that print a report rather than objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TextOrJson {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// A kind as `get` names it: kubectl's singular, plural and short names, or `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindArg {
    /// One kind.
    Kind(Kind),
    /// Pods, Services, Deployments, EndpointSlices, NetworkPolicies and Nodes.
    All,
}

impl std::str::FromStr for KindArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let kind = match s.to_ascii_lowercase().as_str() {
            "all" => return Ok(KindArg::All),
            "po" | "pod" | "pods" => Kind::Pod,
            "svc" | "service" | "services" => Kind::Service,
            "eps" | "endpointslice" | "endpointslices" => Kind::EndpointSlice,
            "netpol" | "networkpolicy" | "networkpolicies" => Kind::NetworkPolicy,
            "no" | "node" | "nodes" => Kind::Node,
            "deploy" | "deployment" | "deployments" => Kind::Deployment,
            "ns" | "namespace" | "namespaces" => Kind::Namespace,
            "ep" | "endpoints" => {
                return Err(format!(
                    "{s:?}: kube-netd keeps a Service's endpoints only as EndpointSlices \
                     (the v1 Endpoints API is deprecated): use `get endpointslices` (or `eps`)"
                ));
            }
            "rs" | "replicaset" | "replicasets" => {
                return Err(format!(
                    "{s:?}: kube-netd's control plane has no ReplicaSets: a Deployment owns \
                     its Pods directly (named <deployment>-<pod-template-hash>-<suffix>): use \
                     `get deployments` or `get pods -l pod-template-hash=HASH`"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown kind {s:?}: expected pods (po), services (svc), endpointslices \
                     (eps), networkpolicies (netpol), nodes (no), deployments (deploy), \
                     namespaces (ns) or all"
                ));
            }
        };
        Ok(KindArg::Kind(kind))
    }
}

/// What `get` and `lab get` print, and how.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// What to print, as kubectl takes it: `KIND [NAME...]`, `KIND,KIND...`, or
    /// `KIND/NAME...`. Kinds: pods (po), services (svc), endpointslices (eps),
    /// networkpolicies (netpol), nodes (no), deployments (deploy), namespaces (ns), or all.
    #[arg(value_name = "RESOURCE", required = true, num_args = 1..)]
    resources: Vec<String>,
    /// Only this namespace.
    #[arg(
        short = 'n',
        long,
        default_value = "default",
        conflicts_with = "all_namespaces"
    )]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only objects whose labels match, in kubectl's syntax: `app=web`, `tier!=db`,
    /// `env in (a,b)`, `env notin (c)`, `key`, `!key`; comma-separated terms all apply.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<LabelSelector>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Format,
}

/// What `get` found: the text for standard output, a note for standard error (kubectl's
/// "No resources found"), and the objects asked for by name that do not exist.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Printed {
    /// For standard output.
    pub out: String,
    /// For standard error, when nothing matched a listing.
    pub note: Option<String>,
    /// kubectl's `pods "db" not found`, one per missing object, in the order asked.
    pub not_found: Vec<String>,
}

impl GetArgs {
    /// Prints what was asked for from `state`: objects to standard output, "No resources
    /// found" to standard error, and an error naming every object asked for by name that is
    /// not there (after printing the ones that are, as kubectl does).
    pub fn print(&self, state: &ClusterState) -> anyhow::Result<()> {
        let printed = self.render(state)?;
        crate::out::stdout(&printed.out)?;
        if let Some(note) = printed.note {
            eprint!("{note}");
        }
        if !printed.not_found.is_empty() {
            anyhow::bail!("{}", printed.not_found.join("\n"));
        }
        Ok(())
    }

    /// What [`GetArgs::print`] prints.
    pub fn render(&self, state: &ClusterState) -> anyhow::Result<Printed> {
        let request = Request::parse(&self.resources)?;
        if self.selector.is_some() && matches!(request, Request::Named { .. }) {
            anyhow::bail!("a name cannot be given together with a selector (-l)");
        }
        if self.all_namespaces && matches!(request, Request::Named { .. }) {
            anyhow::bail!(
                "an object cannot be got by name across all namespaces (-A): name its \
                 namespace with -n"
            );
        }
        let scope = if self.all_namespaces {
            Scope::All
        } else {
            Scope::Namespace(self.namespace.clone())
        };
        match request {
            Request::List(kinds) => self.list(state, &kinds, &scope),
            Request::Named { pairs, kinds } => self.named(state, &pairs, &kinds),
        }
    }

    /// Every object of `kinds` in `scope` that the selector matches.
    fn list(&self, state: &ClusterState, kinds: &[Kind], scope: &Scope) -> anyhow::Result<Printed> {
        let selected: Vec<&Object> = state
            .objects()
            .filter(|o| kinds.contains(&o.kind()))
            .filter(|o| match scope {
                Scope::All => true,
                Scope::Namespace(ns) => !o.kind().is_namespaced() || o.namespace() == ns,
            })
            .filter(|o| {
                self.selector
                    .as_ref()
                    .is_none_or(|s| s.matches(o.meta().labels.as_ref().unwrap_or(&Labels::new())))
            })
            .collect();
        let mut printed = Printed::default();
        match self.output {
            Format::Yaml | Format::Json => printed.out = encode(&as_list(&selected)?, self.output)?,
            Format::Table | Format::Wide | Format::Name => {
                printed.out = self.tables(kinds, &selected, scope == &Scope::All);
                if selected.is_empty() {
                    printed.note = Some(match scope {
                        Scope::Namespace(ns) if kinds.iter().any(|k| k.is_namespaced()) => {
                            format!("No resources found in {ns} namespace.\n")
                        }
                        _ => "No resources found\n".to_owned(),
                    });
                }
            }
        }
        Ok(printed)
    }

    /// The objects asked for by kind and name, in the order asked.
    fn named(
        &self,
        state: &ClusterState,
        pairs: &[(Kind, String)],
        kinds: &[Kind],
    ) -> anyhow::Result<Printed> {
        let mut printed = Printed::default();
        let mut found: Vec<&Object> = Vec::new();
        for (kind, name) in pairs {
            let id = ObjectId {
                kind: *kind,
                namespace: if kind.is_namespaced() {
                    self.namespace.clone()
                } else {
                    String::new()
                },
                name: name.clone(),
            };
            match state.object(&id) {
                // Named twice (`get pod db db`), printed once.
                Some(o) if !found.iter().any(|f| f.id() == id) => found.push(o),
                Some(_) => {}
                None => printed
                    .not_found
                    .push(format!("{} {name:?} not found", resource_name(*kind))),
            }
        }
        printed.out = match self.output {
            Format::Yaml | Format::Json => match found.as_slice() {
                [] => String::new(),
                [one] if pairs.len() == 1 => encode(&serde_json::to_value(one)?, self.output)?,
                _ => encode(&as_list(&found)?, self.output)?,
            },
            Format::Table | Format::Wide | Format::Name => self.tables(kinds, &found, false),
        };
        Ok(printed)
    }

    /// One table per kind in `kinds` order (blank lines between), `kind/name` rows when
    /// several kinds are shown; or `-o name` lines.
    fn tables(&self, kinds: &[Kind], objects: &[&Object], all_ns: bool) -> String {
        let mut out = String::new();
        for kind in kinds {
            let of_kind: Vec<&Object> = objects
                .iter()
                .copied()
                .filter(|o| o.kind() == *kind)
                .collect();
            if of_kind.is_empty() {
                continue;
            }
            if self.output == Format::Name {
                for o in of_kind {
                    let _ = writeln!(out, "{}{}", kind_prefix(*kind), o.name());
                }
                continue;
            }
            let prefix = (kinds.len() > 1).then(|| kind_prefix(*kind));
            let table = table(*kind, &of_kind, all_ns, self.output == Format::Wide, prefix);
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&table);
        }
        out
    }
}

/// What the positional arguments ask for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// Every object of these kinds (in this order, `all` expanded).
    List(Vec<Kind>),
    /// These objects, by kind and name, in the order given; `kinds` in first-seen order.
    Named {
        pairs: Vec<(Kind, String)>,
        kinds: Vec<Kind>,
    },
}

impl Request {
    /// kubectl's forms: `KIND[,KIND...] [NAME...]` or `KIND/NAME...`, never mixed.
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let Some((first, rest)) = args.split_first() else {
            anyhow::bail!("name a kind to get, e.g. `get pods`");
        };
        let one_kind = |s: &str| -> anyhow::Result<Kind> {
            match s.parse::<KindArg>().map_err(anyhow::Error::msg)? {
                KindArg::Kind(k) => Ok(k),
                KindArg::All => anyhow::bail!("`all` cannot be combined with names"),
            }
        };
        if args.iter().any(|a| a.contains('/')) {
            let mut pairs = Vec::new();
            for arg in args {
                let Some((kind, name)) = arg.split_once('/') else {
                    anyhow::bail!(
                        "{arg:?}: with KIND/NAME arguments, name every object that way \
                         (e.g. `get pods/db svc/web`, not `get pods pods/db`)"
                    );
                };
                if name.is_empty() || name.contains('/') {
                    anyhow::bail!("{arg:?} is not KIND/NAME");
                }
                pairs.push((one_kind(kind)?, name.to_owned()));
            }
            let kinds = first_seen(pairs.iter().map(|(k, _)| *k));
            return Ok(Request::Named { pairs, kinds });
        }
        let mut kinds = Vec::new();
        for part in first.split(',') {
            match part.parse::<KindArg>().map_err(anyhow::Error::msg)? {
                KindArg::Kind(k) => kinds.push(k),
                KindArg::All => kinds.extend(ALL),
            }
        }
        let kinds = first_seen(kinds);
        if rest.is_empty() {
            return Ok(Request::List(kinds));
        }
        if first.split(',').any(|p| p.eq_ignore_ascii_case("all")) {
            anyhow::bail!("`all` cannot be combined with names");
        }
        let pairs = kinds
            .iter()
            .flat_map(|k| rest.iter().map(move |n| (*k, n.clone())))
            .collect();
        Ok(Request::Named { pairs, kinds })
    }
}

/// What `all` stands for, in the order it prints.
const ALL: [Kind; 6] = [
    Kind::Pod,
    Kind::Service,
    Kind::Deployment,
    Kind::EndpointSlice,
    Kind::NetworkPolicy,
    Kind::Node,
];

fn first_seen(kinds: impl IntoIterator<Item = Kind>) -> Vec<Kind> {
    let mut out: Vec<Kind> = Vec::new();
    for k in kinds {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// Which namespaces to show.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    /// One namespace.
    Namespace(String),
    /// All namespaces (`-A`).
    All,
}

/// kubectl's `List`, whatever the number of items.
fn as_list(objects: &[&Object]) -> anyhow::Result<serde_json::Value> {
    let items = objects
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "items": items,
        "kind": "List",
        "metadata": {"resourceVersion": ""},
    }))
}

fn encode(value: &serde_json::Value, format: Format) -> anyhow::Result<String> {
    if format == Format::Yaml {
        return serde_yaml_ng::to_string(value).context("encoding YAML");
    }
    let mut s = serde_json::to_string_pretty(value).context("encoding JSON")?;
    s.push('\n');
    Ok(s)
}

/// The resource as kubectl's errors name it: plural, with the API group.
fn resource_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Pod => "pods",
        Kind::Service => "services",
        Kind::Deployment => "deployments.apps",
        Kind::EndpointSlice => "endpointslices.discovery.k8s.io",
        Kind::NetworkPolicy => "networkpolicies.networking.k8s.io",
        Kind::Node => "nodes",
        Kind::Namespace => "namespaces",
    }
}

fn kind_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Pod => "pod/",
        Kind::Service => "service/",
        Kind::Deployment => "deployment.apps/",
        Kind::EndpointSlice => "endpointslice.discovery.k8s.io/",
        Kind::NetworkPolicy => "networkpolicy.networking.k8s.io/",
        Kind::Node => "node/",
        Kind::Namespace => "namespace/",
    }
}

fn table(
    kind: Kind,
    objects: &[&Object],
    all_ns: bool,
    wide: bool,
    prefix: Option<&str>,
) -> String {
    let (mut header, wide_header) = headers(kind);
    if wide {
        header.extend(wide_header);
    }
    let show_ns = all_ns && kind.is_namespaced();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for o in objects {
        let mut row = match o {
            Object::Pod(p) => pod_row(p),
            Object::Service(s) => service_row(s),
            Object::Deployment(d) => deployment_row(d),
            Object::EndpointSlice(s) => slice_row(s),
            Object::NetworkPolicy(p) => policy_row(p),
            Object::Node(n) => node_row(n),
            Object::Namespace(n) => namespace_row(n),
        };
        if !wide {
            row.truncate(header.len());
        }
        row[0] = format!("{}{}", prefix.unwrap_or_default(), row[0]);
        if show_ns {
            row.insert(0, o.namespace().to_owned());
        }
        rows.push(row);
    }
    let mut header: Vec<String> = header.into_iter().map(str::to_owned).collect();
    if show_ns {
        header.insert(0, "NAMESPACE".to_owned());
    }
    align(&header, &rows)
}

fn headers(kind: Kind) -> (Vec<&'static str>, Vec<&'static str>) {
    match kind {
        Kind::Pod => (
            vec!["NAME", "READY", "STATUS", "RESTARTS", "IP", "NODE"],
            vec!["LABELS"],
        ),
        Kind::Service => (
            vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"],
            vec!["SELECTOR"],
        ),
        Kind::Deployment => (
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::EndpointSlice => (
            vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"],
            vec!["SERVICE"],
        ),
        Kind::NetworkPolicy => (vec!["NAME", "POD-SELECTOR"], vec!["POLICY-TYPES"]),
        Kind::Node => (
            vec!["NAME", "STATUS", "ROLES", "INTERNAL-IP"],
            vec!["POD-CIDRS", "LABELS"],
        ),
        Kind::Namespace => (vec!["NAME", "STATUS"], vec!["LABELS"]),
    }
}

fn align(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}   ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".to_owned() } else { s }
}

fn join_labels(labels: Option<&std::collections::BTreeMap<String, String>>) -> String {
    or_none(
        labels
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn pod_row(p: &Pod) -> Vec<String> {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let containers = spec.map_or(0, |s| s.containers.len());
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    let phase = if p.metadata.deletion_timestamp.is_some() {
        "Terminating".to_owned()
    } else {
        status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".to_owned())
    };
    vec![
        p.metadata.name.clone().unwrap_or_default(),
        format!("{}/{containers}", if ready { containers } else { 0 }),
        phase,
        "0".to_owned(),
        or_none(status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()),
        or_none(spec.and_then(|s| s.node_name.clone()).unwrap_or_default()),
        join_labels(p.metadata.labels.as_ref()),
    ]
}

fn service_row(s: &Service) -> Vec<String> {
    let spec = s.spec.clone().unwrap_or_default();
    let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".to_owned());
    let cluster_ip = match ty.as_str() {
        "ExternalName" => "<none>".to_owned(),
        _ => or_none(spec.cluster_ip.clone().unwrap_or_default()),
    };
    let lb_ips: Vec<String> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect();
    let mut external: Vec<String> = lb_ips;
    external.extend(spec.external_ips.iter().flatten().cloned());
    let external = match ty.as_str() {
        "ExternalName" => spec.external_name.clone().unwrap_or_default(),
        "LoadBalancer" if external.is_empty() => "<pending>".to_owned(),
        _ => or_none(external.join(",")),
    };
    let ports: Vec<String> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port {
                Some(np) if np != 0 => format!("{}:{np}/{proto}", p.port),
                _ => format!("{}/{proto}", p.port),
            }
        })
        .collect();
    vec![
        s.metadata.name.clone().unwrap_or_default(),
        ty,
        cluster_ip,
        external,
        or_none(ports.join(",")),
        join_labels(spec.selector.as_ref()),
    ]
}

fn deployment_row(d: &Deployment) -> Vec<String> {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let pod_spec = spec.template.spec.clone().unwrap_or_default();
    vec![
        d.metadata.name.clone().unwrap_or_default(),
        format!("{ready}/{replicas}"),
        status.updated_replicas.unwrap_or(0).to_string(),
        status.available_replicas.unwrap_or(0).to_string(),
        pod_spec
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(","),
        pod_spec
            .containers
            .iter()
            .map(|c| c.image.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(","),
        join_labels(spec.selector.match_labels.as_ref()),
    ]
}

fn slice_row(s: &EndpointSlice) -> Vec<String> {
    let ports: Vec<String> = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.port.map(|n| n.to_string()))
        .collect();
    let addresses: Vec<&String> = s
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter())
        .collect();
    let endpoints = match addresses.len() {
        0 => "<none>".to_owned(),
        n if n <= 3 => addresses
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(","),
        n => format!(
            "{} + {} more...",
            addresses[..3]
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(","),
            n - 3
        ),
    };
    vec![
        s.metadata.name.clone().unwrap_or_default(),
        s.address_type.clone(),
        or_none(ports.join(",")),
        endpoints,
        or_none(
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name").cloned())
                .unwrap_or_default(),
        ),
    ]
}

fn policy_row(p: &NetworkPolicy) -> Vec<String> {
    let spec = p.spec.clone().unwrap_or_default();
    let selector = spec.pod_selector.clone().unwrap_or_default();
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    vec![
        p.metadata.name.clone().unwrap_or_default(),
        or_none(parts.join(",")),
        or_none(spec.policy_types.unwrap_or_default().join(",")),
    ]
}

fn node_row(n: &Node) -> Vec<String> {
    let internal: Vec<String> = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .collect();
    let spec = n.spec.clone().unwrap_or_default();
    let cidrs = spec
        .pod_cidrs
        .clone()
        .or_else(|| spec.pod_cidr.clone().map(|c| vec![c]));
    let roles: Vec<String> = n
        .metadata
        .labels
        .iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_owned)
        })
        .collect();
    vec![
        n.metadata.name.clone().unwrap_or_default(),
        "Ready".to_owned(),
        or_none(roles.join(",")),
        or_none(internal.join(",")),
        or_none(cidrs.unwrap_or_default().join(",")),
        join_labels(n.metadata.labels.as_ref()),
    ]
}

fn namespace_row(n: &Namespace) -> Vec<String> {
    vec![
        n.metadata.name.clone().unwrap_or_default(),
        "Active".to_owned(),
        join_labels(n.metadata.labels.as_ref()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_kubectl() {
        let header = vec!["NAME".to_owned(), "IP".to_owned()];
        let rows = vec![vec!["a".to_owned(), "10.0.0.1".to_owned()]];
        assert_eq!(align(&header, &rows), "NAME   IP\na      10.0.0.1\n");
    }

    #[test]
    fn kinds_parse_with_short_names() {
        assert_eq!("svc".parse::<KindArg>(), Ok(KindArg::Kind(Kind::Service)));
        assert_eq!(
            "netpol".parse::<KindArg>(),
            Ok(KindArg::Kind(Kind::NetworkPolicy))
        );
        assert_eq!("all".parse::<KindArg>(), Ok(KindArg::All));
        assert!("configmaps".parse::<KindArg>().is_err());
    }
}
