//! Upstream resolvers: from flags, or from the `nameserver` lines of a resolv.conf.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::DnsError;

/// The `nameserver` addresses of a resolv.conf, on port 53, in file order. Zone indexes
/// (`fe80::1%eth0`) and unparsable lines are skipped, as the C library does.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Reads a resolv.conf (usually `/etc/resolv.conf`) and returns its nameservers.
pub fn read_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConfReadFailed {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse_resolv_conf(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameserver_lines() {
        let text = "# generated\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver   2001:db8::53 \nnameserver fe80::1%eth0\nnameserver\noptions ndots:5\n";
        let got = parse_resolv_conf(text);
        let want: Vec<SocketAddr> = vec![
            "10.96.0.10:53".parse().expect("addr"),
            "[2001:db8::53]:53".parse().expect("addr"),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = read_resolv_conf(Path::new("/nonexistent/resolv.conf")).expect_err("missing");
        assert!(matches!(err, DnsError::ResolvConfReadFailed { .. }));
    }
}
