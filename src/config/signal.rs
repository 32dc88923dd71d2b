//! Settings of `ma-webrtc-gateway signal`, the self-hosted signaling server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::{bad, ConfigError, SignalArgs};
use crate::signaling::server::limits::parse_cidrs;
use crate::signaling::server::ServerConfig;

/// Validated settings of the signaling server.
#[derive(Debug, Clone)]
pub struct SignalConfig {
    pub listen: SocketAddr,
    /// Certificate chain and key files, when serving TLS directly.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub server: ServerConfig,
}

fn number(
    var: &'static str,
    flag: &'static str,
    value: &str,
    max: u64,
) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| {
            bad(
                var,
                flag,
                format!("{value:?} is not a whole number from 0 to {max}"),
            )
        })
}

fn boolean(var: &'static str, flag: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(bad(var, flag, format!("{value:?} is not true or false"))),
    }
}

fn non_empty(p: &Option<PathBuf>) -> Option<PathBuf> {
    p.clone().filter(|p| !p.as_os_str().is_empty())
}

impl SignalConfig {
    pub fn from_args(a: &SignalArgs) -> Result<SignalConfig, ConfigError> {
        let listen_str = a.listen.trim();
        let listen = match listen_str.parse::<SocketAddr>() {
            Ok(addr) => addr,
            // A bare port listens on every IPv4 address.
            Err(_) => match listen_str.parse::<u16>() {
                Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                Err(_) => {
                    return Err(bad(
                        "MA_SIGNAL_LISTEN",
                        "listen",
                        format!(
                            "{:?} is not ADDRESS:PORT (e.g. 0.0.0.0:8787 or [::]:8787)",
                            a.listen
                        ),
                    ))
                }
            },
        };
        let tls = match (non_empty(&a.tls_cert), non_empty(&a.tls_key)) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => {
                return Err(bad(
                    "MA_SIGNAL_TLS_KEY",
                    "tls-key",
                    "required with --tls-cert",
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "MA_SIGNAL_TLS_CERT",
                    "tls-cert",
                    "required with --tls-key",
                ))
            }
        };
        let max_connections = number(
            "MA_SIGNAL_MAX_CONNECTIONS",
            "max-connections",
            &a.max_connections,
            1_000_000,
        )?;
        if max_connections == 0 {
            return Err(bad(
                "MA_SIGNAL_MAX_CONNECTIONS",
                "max-connections",
                "must be at least 1",
            ));
        }
        let rate_limit = number(
            "MA_SIGNAL_RATE_LIMIT",
            "rate-limit",
            &a.rate_limit,
            1_000_000,
        )?;
        let lookup_limit = number(
            "MA_SIGNAL_LOOKUP_LIMIT",
            "lookup-limit",
            &a.lookup_limit,
            1_000_000,
        )?;
        let limit_loopback = boolean(
            "MA_SIGNAL_LIMIT_LOOPBACK",
            "limit-loopback",
            &a.limit_loopback,
        )?;
        let max_sockets_per_ip = number(
            "MA_SIGNAL_MAX_SOCKETS_PER_IP",
            "max-sockets-per-ip",
            &a.max_sockets_per_ip,
            1_000_000,
        )?;
        let trusted_proxies = parse_cidrs(&a.trusted_proxy)
            .map_err(|e| bad("MA_SIGNAL_TRUSTED_PROXY", "trusted-proxy", e))?;
        Ok(SignalConfig {
            listen,
            tls,
            max_connections: max_connections as usize,
            server: ServerConfig {
                rate_limit: rate_limit as u32,
                lookup_limit: lookup_limit as u32,
                limit_loopback,
                max_sockets_per_ip: max_sockets_per_ip as usize,
                trusted_proxies,
                ..ServerConfig::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<SignalConfig, ConfigError> {
        let mut argv = vec!["x", "signal"];
        argv.extend_from_slice(extra);
        let cli = crate::config::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            Some(crate::config::Command::Signal(a)) => SignalConfig::from_args(&a),
            other => panic!("not the signal command: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        // Only meaningful when the environment does not set MA_SIGNAL_*.
        if std::env::vars().any(|(k, _)| k.starts_with("MA_SIGNAL_")) {
            return;
        }
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8787".parse().unwrap());
        assert!(c.tls.is_none());
        assert_eq!(c.max_connections, 4096);
        assert_eq!(c.server.rate_limit, 100);
        assert_eq!(c.server.lookup_limit, 10);
        assert!(!c.server.limit_loopback);
        assert_eq!(c.server.max_sockets_per_ip, 32);
        assert!(c.server.trusted_proxies.is_empty());
    }

    #[test]
    fn values_and_errors_name_the_variable() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--limit-loopback",
            "yes",
        ])
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.server.rate_limit, 0);
        assert!(c.server.limit_loopback);
        assert_eq!(parse(&["--listen", "9000"]).unwrap().listen.port(), 9000);
        let e = parse(&["--listen", "nowhere"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid MA_SIGNAL_LISTEN (--listen): "),
            "{e}"
        );
        assert_eq!(
            parse(&["--max-connections", "0"]).unwrap_err().var,
            "MA_SIGNAL_MAX_CONNECTIONS"
        );
        assert_eq!(
            parse(&["--rate-limit=-1"]).unwrap_err().var,
            "MA_SIGNAL_RATE_LIMIT"
        );
        assert_eq!(
            parse(&["--lookup-limit", "many"]).unwrap_err().var,
            "MA_SIGNAL_LOOKUP_LIMIT"
        );
        assert_eq!(
            parse(&["--limit-loopback", "maybe"]).unwrap_err().var,
            "MA_SIGNAL_LIMIT_LOOPBACK"
        );
        assert_eq!(
            parse(&["--tls-cert", "c.pem"]).unwrap_err().var,
            "MA_SIGNAL_TLS_KEY"
        );
        assert_eq!(
            parse(&["--tls-key", "k.pem"]).unwrap_err().var,
            "MA_SIGNAL_TLS_CERT"
        );
        let c = parse(&[
            "--trusted-proxy",
            "127.0.0.1, 10.0.0.0/8,fd00::/8",
            "--max-sockets-per-ip",
            "5",
        ])
        .unwrap();
        assert_eq!(c.server.trusted_proxies.len(), 3);
        assert!(c.server.trusted_proxies[1].contains("10.9.8.7".parse().unwrap()));
        assert_eq!(c.server.max_sockets_per_ip, 5);
        assert_eq!(
            parse(&["--trusted-proxy", "10.0.0.0/40"]).unwrap_err().var,
            "MA_SIGNAL_TRUSTED_PROXY"
        );
        assert_eq!(
            parse(&["--max-sockets-per-ip", "x"]).unwrap_err().var,
            "MA_SIGNAL_MAX_SOCKETS_PER_IP"
        );
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .unwrap()
            .tls
            .is_some());
    }
}
