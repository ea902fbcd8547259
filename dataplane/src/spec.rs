//! Route specifications: a route name, the address to listen on and the upstreams, checked
//! once here for both the command line (`--route NAME=LISTEN=UPSTREAM[,UPSTREAM]`) and the
//! control API, so both reject the same inputs with the same words.
//!
//! Addresses are literal `IP:PORT` (`[IPv6]:PORT`); host names are refused because a
//! resolver call on the swap path could block or change its answer between swaps.

use std::net::SocketAddr;

use thiserror::Error;

/// Longest route name.
pub const NAME_MAX: usize = 64;

/// A validated route: what to listen on and where to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub name: String,
    pub listen: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
}

/// Why a route specification was refused. Each variant names the offending text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "route name {name:?} is not valid: use 1 to {NAME_MAX} characters from A-Z a-z 0-9 . _ -, \
         starting with a letter or digit"
    )]
    Name { name: String },
    #[error("{what} address {text:?} is not IP:PORT (IPv6 as [ADDR]:PORT)")]
    Address { what: &'static str, text: String },
    #[error("{what} address {text:?} has port 0")]
    PortZero { what: &'static str, text: String },
    #[error(
        "route {text:?} is not NAME=LISTEN=UPSTREAM[,UPSTREAM] \
         (example: db=127.0.0.1:15432=172.17.0.2:5432)"
    )]
    RouteSyntax { text: String },
}

impl RouteSpec {
    /// Parses the `--route` flag value `NAME=LISTEN=UPSTREAM[,UPSTREAM]`. An empty upstream
    /// list (`db=127.0.0.1:15432=`) starts the route in hold.
    pub fn parse_flag(text: &str) -> Result<RouteSpec, SpecError> {
        let syntax = || SpecError::RouteSyntax {
            text: text.to_owned(),
        };
        let mut parts = text.splitn(3, '=');
        let (Some(name), Some(listen), Some(upstreams)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(syntax());
        };
        let upstreams: Vec<&str> = if upstreams.is_empty() {
            Vec::new()
        } else {
            upstreams.split(',').collect()
        };
        RouteSpec::from_parts(name, listen, &upstreams)
    }

    /// Validates a route given as separate texts (control API body, `--listen`/`--upstream`).
    pub fn from_parts<S: AsRef<str>>(
        name: &str,
        listen: &str,
        upstreams: &[S],
    ) -> Result<RouteSpec, SpecError> {
        check_name(name)?;
        let listen = parse_listen(listen)?;
        let upstreams = upstreams
            .iter()
            .map(|text| parse_upstream(text.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteSpec {
            name: name.to_owned(),
            listen,
            upstreams,
        })
    }
}

/// Checks a route name: it appears in URLs, metric labels and log lines. The first character
/// is a letter or digit so that no name is a URL dot segment (`.` and `..` are removed from
/// paths by many HTTP clients, so such a route could not be addressed).
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let valid = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(SpecError::Name {
            name: name.to_owned(),
        })
    }
}

/// Parses a listen address. Port 0 is allowed and picks a free port (useful in tests).
pub fn parse_listen(text: &str) -> Result<SocketAddr, SpecError> {
    text.trim().parse().map_err(|_| SpecError::Address {
        what: "listen",
        text: text.to_owned(),
    })
}

/// Parses an upstream address; port 0 cannot be connected to.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, SpecError> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| SpecError::Address {
        what: "upstream",
        text: text.to_owned(),
    })?;
    if addr.port() == 0 {
        return Err(SpecError::PortZero {
            what: "upstream",
            text: text.to_owned(),
        });
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_flag_with_one_upstream() {
        let spec = RouteSpec::parse_flag("db=127.0.0.1:15432=172.17.0.2:5432").unwrap();
        assert_eq!(spec.name, "db");
        assert_eq!(spec.listen, "127.0.0.1:15432".parse().unwrap());
        assert_eq!(spec.upstreams, vec!["172.17.0.2:5432".parse().unwrap()]);
    }

    #[test]
    fn route_flag_with_ipv6_and_several_upstreams() {
        let spec = RouteSpec::parse_flag("web=[::1]:18080=[::1]:8080,127.0.0.1:8081").unwrap();
        assert_eq!(spec.listen, "[::1]:18080".parse().unwrap());
        assert_eq!(spec.upstreams.len(), 2);
        assert_eq!(spec.upstreams[1], "127.0.0.1:8081".parse().unwrap());
    }

    #[test]
    fn route_flag_with_empty_upstreams_holds() {
        let spec = RouteSpec::parse_flag("db=127.0.0.1:15432=").unwrap();
        assert!(spec.upstreams.is_empty());
    }

    #[test]
    fn route_flag_missing_parts_is_a_syntax_error() {
        for text in ["db", "db=127.0.0.1:1", ""] {
            let err = RouteSpec::parse_flag(text).unwrap_err();
            assert!(
                matches!(err, SpecError::RouteSyntax { .. }),
                "{text}: {err}"
            );
            assert!(err.to_string().contains("NAME=LISTEN=UPSTREAM"));
        }
    }

    #[test]
    fn bad_addresses_name_the_text() {
        let err = RouteSpec::parse_flag("db=localhost:5432=127.0.0.1:1").unwrap_err();
        assert_eq!(
            err,
            SpecError::Address {
                what: "listen",
                text: "localhost:5432".into()
            }
        );
        let err = RouteSpec::parse_flag("db=127.0.0.1:1=::1:5432").unwrap_err();
        assert!(err.to_string().contains("\"::1:5432\""), "{err}");
        let err = RouteSpec::parse_flag("db=127.0.0.1:1=127.0.0.1:0").unwrap_err();
        assert!(matches!(err, SpecError::PortZero { .. }));
        let err = RouteSpec::parse_flag("db=127.0.0.1:1=127.0.0.1:5432,").unwrap_err();
        assert!(matches!(err, SpecError::Address { text, .. } if text.is_empty()));
    }

    #[test]
    fn names_are_url_and_label_safe() {
        assert!(check_name("pg-main_1.v2").is_ok());
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(NAME_MAX + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_that_are_url_dot_segments_are_refused() {
        for bad in [".", "..", "-", "_a", ".hidden"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
