//! [`DomainName`]: a validated, lower-case DNS name, and the names the zone derives.

use std::borrow::Borrow;
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

/// Why a text is not a domain name the zone can hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty (the root is not a zone we serve).
    #[error("the name is empty")]
    Empty,
    /// The name is longer than the 253 characters DNS allows.
    #[error("{name:?} is longer than 253 characters")]
    TooLong {
        /// The name.
        name: String,
    },
    /// A label is empty or longer than 63 characters.
    #[error("{name:?} has an empty label or one longer than 63 characters")]
    BadLabelLength {
        /// The name.
        name: String,
    },
    /// A label holds a character other than a letter, digit, `-` or `_`.
    #[error("{name:?} holds a character other than a letter, digit, '-' or '_'")]
    BadCharacter {
        /// The name.
        name: String,
    },
}

/// A domain name, lower-case, without the trailing dot: `web.default.svc.cluster.local`.
///
/// Labels hold letters, digits, `-` and `_` only (Kubernetes names, hostnames and the `_port`
/// labels of SRV names), so every `DomainName` converts to a wire name without escaping.
/// The text is shared: clones are cheap, and the zone stores each name once (a record's
/// target is the same allocation as the owner name it points to).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainName(Arc<str>);

impl DomainName {
    /// The name as text, without the trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` is `ancestor` or lies below it.
    pub fn is_within(&self, ancestor: &DomainName) -> bool {
        within(&self.0, &ancestor.0)
    }

    /// `cluster.local`, the default zone.
    pub(crate) fn cluster_local() -> DomainName {
        DomainName(Arc::from("cluster.local"))
    }

    /// `in-addr.arpa`, or `ip6.arpa` for IPv6.
    pub(crate) fn reverse_zone(v6: bool) -> DomainName {
        DomainName(Arc::from(if v6 { IP6_ARPA } else { IN_ADDR_ARPA }))
    }

    /// A name from text the zone already holds as a name (a suffix of a stored name):
    /// lower-case and valid, so not checked again.
    pub(crate) fn from_zone_text(text: &str) -> DomainName {
        DomainName(Arc::from(text))
    }

    /// `label.self`, validated (only the new label needs checking).
    pub(crate) fn child(&self, label: &str) -> Result<DomainName, NameError> {
        let len = label.len() + 1 + self.0.len();
        let error_name = || format!("{label}.{}", self.0);
        if len > 253 {
            return Err(NameError::TooLong { name: error_name() });
        }
        if label.is_empty() || label.len() > 63 {
            return Err(NameError::BadLabelLength { name: error_name() });
        }
        if !label.bytes().all(label_byte) {
            return Err(NameError::BadCharacter { name: error_name() });
        }
        let mut name = String::with_capacity(len);
        name.extend(label.chars().map(|c| c.to_ascii_lowercase()));
        name.push('.');
        name.push_str(&self.0);
        Ok(DomainName(name.into()))
    }

    /// The reverse-lookup name of an address (`4.3.2.1.in-addr.arpa`, nibbles in `ip6.arpa`).
    pub fn reverse(ip: IpAddr) -> DomainName {
        let mut s = String::with_capacity(72);
        match ip {
            IpAddr::V4(v4) => {
                for octet in v4.octets().iter().rev() {
                    // Writing to a String cannot fail.
                    let _ = write!(s, "{octet}.");
                }
                s.push_str(IN_ADDR_ARPA);
            }
            IpAddr::V6(v6) => {
                for byte in v6.octets().iter().rev() {
                    s.push(nibble(byte & 0xf));
                    s.push('.');
                    s.push(nibble(byte >> 4));
                    s.push('.');
                }
                s.push_str(IP6_ARPA);
            }
        }
        DomainName(s.into())
    }
}

impl FromStr for DomainName {
    type Err = NameError;

    /// Parses a name, case-insensitively, with or without the trailing dot.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > 253 {
            return Err(NameError::TooLong { name: s.to_owned() });
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(NameError::BadLabelLength { name: s.to_owned() });
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(NameError::BadCharacter { name: s.to_owned() });
            }
        }
        Ok(DomainName(s.to_ascii_lowercase().into()))
    }
}

/// Names hash and compare as their text, so maps keyed by names are looked up by `&str`.
impl Borrow<str> for DomainName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A byte a label may hold.
fn label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The IPv4 reverse zone.
pub(crate) const IN_ADDR_ARPA: &str = "in-addr.arpa";
/// The IPv6 reverse zone.
pub(crate) const IP6_ARPA: &str = "ip6.arpa";

/// Whether `name` is `ancestor` or below it; both lower-case without the trailing dot.
pub(crate) fn within(name: &str, ancestor: &str) -> bool {
    name == ancestor
        || name.len() > ancestor.len()
            && name.ends_with(ancestor)
            && name.as_bytes()[name.len() - ancestor.len() - 1] == b'.'
}

/// The address a full reverse name stands for (`4.3.2.1.in-addr.arpa` → 1.2.3.4).
pub(crate) fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut labels = rest.split('.');
        for slot in octets.iter_mut().rev() {
            let label = labels.next()?;
            // Reverse labels are decimal without leading zeros, as `reverse` writes them.
            if label.len() > 1 && label.starts_with('0') {
                return None;
            }
            *slot = label.parse().ok()?;
        }
        return labels.next().is_none().then_some(IpAddr::from(octets));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let mut octets = [0u8; 16];
    let mut labels = rest.split('.');
    for slot in octets.iter_mut().rev() {
        let low = hex_nibble(labels.next()?)?;
        let high = hex_nibble(labels.next()?)?;
        *slot = high << 4 | low;
    }
    labels.next().is_none().then_some(IpAddr::from(octets))
}

/// The label CoreDNS gives an address: dots (IPv4) or colons (IPv6) replaced by dashes.
pub(crate) fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address a dashed label stands for, the inverse of [`dashed`].
pub(crate) fn undash(label: &str) -> Option<IpAddr> {
    if label.bytes().filter(|&b| b == b'-').count() == 3 && !label.contains("--") {
        return label.replace('-', ".").parse().ok();
    }
    label.replace('-', ":").parse().ok().filter(IpAddr::is_ipv6)
}

fn nibble(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

fn hex_nibble(label: &str) -> Option<u8> {
    match label.as_bytes() {
        [b] => char::from(*b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_case_insensitively_and_rejects_bad_ones() {
        let n: DomainName = "Web.Default.SVC.cluster.local.".parse().expect("name");
        assert_eq!(n.as_str(), "web.default.svc.cluster.local");
        assert_eq!("".parse::<DomainName>(), Err(NameError::Empty));
        assert!(matches!(
            "a..b".parse::<DomainName>(),
            Err(NameError::BadLabelLength { .. })
        ));
        assert!(matches!(
            "a b.c".parse::<DomainName>(),
            Err(NameError::BadCharacter { .. })
        ));
        let long = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            long.parse::<DomainName>(),
            Err(NameError::BadLabelLength { .. })
        ));
        let too_long = vec!["abcdefghi"; 26].join(".");
        assert!(matches!(
            too_long.parse::<DomainName>(),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn reverse_names_round_trip() {
        for ip in ["10.96.0.10", "0.0.0.0", "fd00:10:96::a", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            let rev = DomainName::reverse(ip);
            assert_eq!(parse_reverse(rev.as_str()), Some(ip), "{rev}");
        }
        assert_eq!(
            DomainName::reverse("10.96.0.10".parse().expect("ip")).as_str(),
            "10.0.96.10.in-addr.arpa"
        );
        assert_eq!(parse_reverse("0.96.10.in-addr.arpa"), None);
        assert_eq!(parse_reverse("1.0.0.96.10.in-addr.arpa"), None);
        assert_eq!(parse_reverse("01.0.96.10.in-addr.arpa"), None);
    }

    #[test]
    fn dashed_labels_round_trip() {
        for ip in ["10.244.1.5", "fd00::1", "2001:db8:0:1::5"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(undash(&dashed(ip)), Some(ip));
        }
        assert_eq!(dashed("fd00::1".parse().expect("ip")), "fd00--1");
        assert_eq!(undash("1-2-3"), None);
        assert_eq!(undash("a-b-c-d"), None);
        assert_eq!(undash("web"), None);
    }

    #[test]
    fn within_respects_label_boundaries() {
        assert!(within("a.cluster.local", "cluster.local"));
        assert!(within("cluster.local", "cluster.local"));
        assert!(!within("acluster.local", "cluster.local"));
        assert!(!within("local", "cluster.local"));
    }
}
