//! Primitive validators for names, labels and ports, with the API server's rules.
//!
//! Object-level validation (which field must hold what) lives in [`crate::validate`]; these
//! are the building blocks it and the selector parser share.

use crate::field::{FieldError, FieldPath};

/// Maximum length of a DNS-1123 label (namespace names, Service names, port names...).
pub const DNS1123_LABEL_MAX: usize = 63;
/// Maximum length of a DNS-1123 subdomain (most object names).
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Whether `s` is a DNS-1123 label: lower-case alphanumerics and '-', starting and ending
/// with an alphanumeric, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS1123_LABEL_MAX
        && s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower)
}

/// Whether `s` is a DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= DNS1123_SUBDOMAIN_MAX && s.split('.').all(is_dns1123_label)
}

/// Checks a DNS-1123 label.
pub fn validate_dns1123_label(s: &str, path: &FieldPath) -> Result<(), FieldError> {
    if is_dns1123_label(s) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            path.clone(),
            s,
            "is not a valid DNS-1123 label (lower-case alphanumerics and '-', \
             starting and ending with an alphanumeric, at most 63 characters)",
        ))
    }
}

/// Checks a DNS-1123 subdomain.
pub fn validate_dns1123_subdomain(s: &str, path: &FieldPath) -> Result<(), FieldError> {
    if is_dns1123_subdomain(s) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            path.clone(),
            s,
            "is not a valid DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', \
             at most 253 characters)",
        ))
    }
}

/// Whether `s` is a "qualified name" part: alphanumerics, '-', '_', '.', starting and ending
/// with an alphanumeric, at most 63 characters.
fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks a label key: an optional DNS-1123 subdomain prefix and '/', then a name part.
pub fn validate_label_key(key: &str, path: &FieldPath) -> Result<(), FieldError> {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(key),
    };
    if ok {
        Ok(())
    } else {
        Err(FieldError::invalid(
            path.clone(),
            key,
            "is not a valid label key (an optional DNS subdomain prefix and '/', then at most 63 \
             alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)",
        ))
    }
}

/// Checks a label value: empty, or at most 63 alphanumerics, '-', '_', '.', starting and
/// ending with an alphanumeric.
pub fn validate_label_value(value: &str, path: &FieldPath) -> Result<(), FieldError> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            path.clone(),
            value,
            "is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', \
             starting and ending with an alphanumeric)",
        ))
    }
}

/// Whether `s` is an IANA service name as Kubernetes accepts for named ports: at most 15
/// lower-case alphanumerics and '-', at least one letter, no leading, trailing or double '-'.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Checks a named port.
pub fn validate_port_name(s: &str, path: &FieldPath) -> Result<(), FieldError> {
    if is_port_name(s) {
        Ok(())
    } else {
        Err(FieldError::invalid(
            path.clone(),
            s,
            "is not a valid port name",
        ))
    }
}

/// Checks a port number (1–65535) and narrows it.
pub fn validate_port_number(n: i32, path: &FieldPath) -> Result<u16, FieldError> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(FieldError::invalid(
            path.clone(),
            n,
            "must be between 1 and 65535, inclusive",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "web-1", "1abc", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok:?}");
        }
        for bad in ["", "Web", "-web", "web-", "we_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad:?}");
        }
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
    }

    #[test]
    fn label_keys_and_values() {
        let p = FieldPath::new("metadata.labels");
        for ok in [
            "app",
            "app.kubernetes.io/name",
            "kubernetes.io/metadata.name",
            "A_b.c",
        ] {
            assert!(validate_label_key(ok, &p).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "/app",
            "app/",
            "-app",
            "Foo.com/app",
            "a/b/c",
            &"a".repeat(64),
        ] {
            assert!(validate_label_key(bad, &p).is_err(), "{bad:?}");
        }
        for ok in ["", "v1", "a-b_c.d"] {
            assert!(validate_label_value(ok, &p).is_ok(), "{ok:?}");
        }
        for bad in ["-a", "a-", "a b", &"a".repeat(64)] {
            assert!(validate_label_value(bad, &p).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_names_and_numbers() {
        for ok in ["http", "http-alt", "h2c", "a1"] {
            assert!(is_port_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            "http-",
            "-http",
            "ht--tp",
            "123",
            "HTTP",
            "averyveryverylongname",
        ] {
            assert!(!is_port_name(bad), "{bad:?}");
        }
        let p = FieldPath::new("port");
        assert_eq!(validate_port_number(80, &p), Ok(80));
        assert!(validate_port_number(0, &p).is_err());
        assert!(validate_port_number(65536, &p).is_err());
        assert!(validate_port_number(-1, &p).is_err());
    }
}
