//! Names and hashes derived from content, so that the same input always gives the same
//! names: upstream's pod-template-hash, generated-name suffixes, UIDs, and the natural order
//! of Node names.

use std::cmp::Ordering;

use sha2::{Digest, Sha256};

/// The alphabet upstream uses for generated names and encoded hashes
/// (`k8s.io/apimachinery/pkg/util/rand`): no vowels, no 0/1/3, so no words and no look-alikes.
pub(crate) const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Length of the random part of a generated name (`metadata.generateName`).
const SUFFIX_LEN: usize = 5;

/// Longest base of a generated name: 63 minus the suffix, as upstream's
/// `SimpleNameGenerator` truncates it.
const MAX_GENERATED_BASE: usize = 63 - SUFFIX_LEN;

/// 32-bit FNV-1a, the hash upstream feeds a pod template into.
pub(crate) fn fnv32a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Upstream's `rand.SafeEncodeString`: every byte mapped into [`SAFE_ALPHABET`].
pub(crate) fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// SHA-256 over the parts, each terminated by a NUL so that `["ab", "c"]` and `["a", "bc"]`
/// differ.
fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// A 64-bit hash of the parts, for hash-derived allocations (ClusterIPs, nodePorts).
pub(crate) fn hash64(parts: &[&str]) -> u64 {
    let d = digest(parts);
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// A 5-character suffix in [`SAFE_ALPHABET`], derived from the parts where upstream draws it
/// at random.
pub(crate) fn suffix(parts: &[&str]) -> String {
    let d = digest(parts);
    d[..SUFFIX_LEN]
        .iter()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(*b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// `generateName` + suffix, truncating the base as upstream does so the name stays a valid
/// DNS-1123 label length.
pub(crate) fn generate_name(base: &str, suffix: &str) -> String {
    let cut = base
        .char_indices()
        .nth(MAX_GENERATED_BASE)
        .map_or(base.len(), |(i, _)| i);
    format!("{}{suffix}", &base[..cut])
}

/// A UUID-shaped UID derived from the object's identity, for objects the input gives none.
pub(crate) fn uid(kind: &str, namespace: &str, name: &str) -> String {
    let mut d = digest(&["uid", kind, namespace, name]);
    // Version 5 and the RFC 4122 variant, so it reads as a name-based UUID.
    d[6] = (d[6] & 0x0f) | 0x50;
    d[8] = (d[8] & 0x3f) | 0x80;
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Compares names so that digit runs compare as numbers: `node-2` < `node-10`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_digits(a);
                let (nb, rb) = split_digits(b);
                let (ta, tb) = (trim_zeros(na), trim_zeros(nb));
                let ord = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then(na.len().cmp(&nb.len()));
                if ord != Ordering::Equal {
                    return ord;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|c| **c == b'0').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv32a_matches_the_reference_vectors() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn safe_encoding_uses_the_upstream_alphabet() {
        // '0' is byte 48 → 48 % 27 = 21 → '4'; '9' is 57 → 3 → 'f'.
        assert_eq!(safe_encode("09"), "4f");
        let s = suffix(&["default", "web", "0"]);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{s}");
        assert_eq!(s, suffix(&["default", "web", "0"]));
        assert_ne!(s, suffix(&["default", "web", "1"]));
    }

    #[test]
    fn generated_names_are_truncated_like_upstream() {
        assert_eq!(generate_name("web-", "abcde"), "web-abcde");
        let long = "x".repeat(80);
        assert_eq!(generate_name(&long, "abcde").len(), 63);
    }

    #[test]
    fn uids_look_like_uuids_and_differ_per_object() {
        let a = uid("Pod", "default", "a");
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'5');
        assert_ne!(a, uid("Pod", "default", "b"));
        assert_ne!(a, uid("Service", "default", "a"));
    }

    #[test]
    fn natural_order() {
        let cases = [
            ("node-2", "node-10", Ordering::Less),
            ("node-10", "node-9", Ordering::Greater),
            ("node-1", "node-1", Ordering::Equal),
            ("node-01", "node-1", Ordering::Greater),
            ("a", "b", Ordering::Less),
            ("node", "node-1", Ordering::Less),
            ("worker-1", "node-2", Ordering::Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(natural_cmp(a, b), want, "{a} vs {b}");
        }
    }
}
