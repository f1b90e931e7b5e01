//! qmail's `control/smtproutes`, read as qmail-remote reads it: which
//! relay (if any) a domain's mail goes to instead of its MX hosts. The
//! supervisor reads it so that a routed domain's site is its relay, found
//! without a lookup (see [`crate::limits`]); qmail-remote still reads the
//! file itself and does the delivering.
//!
//! ```text
//! example.com:relay.example.net       example.com: to the relay
//! example.org:relay.example.net:2525  example.org: to it, port 2525
//! .example.com:[192.0.2.1]            every subdomain of example.com
//! :smarthost.example.net              every other domain (the default)
//! local.example:                      an empty relay: by MX, as usual
//! ```
//!
//! A line is `DOMAIN:RELAY` or `DOMAIN:RELAY:PORT`, split at its first
//! ':'; the relay's port, after a second ':', is 1 to 65535 (qmail-remote
//! takes 25 when none is given). Lines are read as [`control::lines`]
//! reads every control file (blank lines and `#` comments skipped, the
//! line trimmed); the fields are not trimmed, as qmail-remote does not
//! trim them, so `example.com :relay` names the domain `example.com `,
//! which no recipient has.
//!
//! Matching is qmail-remote's: the whole domain first, then each suffix
//! that starts at a '.', from the left (longest first: `.b.example.com`
//! before `.example.com` for `a.b.example.com`), then the empty key of
//! the default route. A suffix key `.example.com` matches
//! `sub.example.com`, not `example.com`. An empty relay (`domain:`)
//! stops the search and means "by MX", as in qmail-remote.
//!
//! qmail compares without ASCII case; here both sides are normalised as
//! [`domain::normalise`] normalises a recipient's host (suffixes as
//! names, like the limits file's), so a route matches every spelling of
//! its domain. The relay is normalised the same way, so the site key of a
//! relay is one spelling of it; an IP literal relay stays `[a.b.c.d]`.
//!
//! Where qmail-remote is lenient, this is too: a line without a ':' is
//! ignored, and of two lines naming one domain the later wins (qmail's
//! `constmap` finds the last one first). What would break qmail-remote's
//! delivery too is an error naming its line: a port that is not 1 to
//! 65535, a port with no relay, a domain that normalises to nothing.
//!
//! [`domain::normalise`]: crate::domain::normalise

use std::collections::HashMap;

use crate::control::{self, ControlError};
use crate::domain;

/// Where the routes send a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The relay host, normalised; `None` for an empty relay (`domain:`),
    /// which means delivery by MX as if there were no route.
    pub relay: Option<Vec<u8>>,
    /// The relay's port, if the line gave one.
    pub port: Option<u16>,
    /// The line of the file that gave the route.
    pub line: usize,
}

/// A parsed `smtproutes` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// Normalised domain → its route.
    domains: HashMap<Vec<u8>, Route>,
    /// Suffix (normalised, without its leading '.') → its route.
    suffixes: HashMap<Vec<u8>, Route>,
    /// The route of the empty key, `:relay`.
    default: Option<Route>,
    /// The longest key in `suffixes`: no longer tail can match.
    suffix_max: usize,
}

impl Routes {
    /// No file: no routes, every domain by MX.
    pub fn absent() -> Routes {
        Routes::default()
    }

    /// Parses the file's contents; the first error in line order.
    pub fn parse(text: &[u8]) -> Result<Routes, ControlError> {
        let mut routes = Routes::absent();
        for (line, text) in control::lines(text) {
            let Some(colon) = text.iter().position(|&b| b == b':') else {
                // qmail-remote's constmap skips a line without a ':'.
                continue;
            };
            let error = |why: &str| ControlError::new(line, text, why);
            let (key, value) = (&text[..colon], &text[colon + 1..]);
            let route = parse_route(value, line).map_err(error)?;
            match key.split_first() {
                None => routes.default = Some(route),
                Some((b'.', suffix)) => {
                    let suffix = domain::normalise_name(suffix, false);
                    if suffix.is_empty() {
                        return Err(error("empty domain after '.'"));
                    }
                    routes.suffix_max = routes.suffix_max.max(suffix.len());
                    routes.suffixes.insert(suffix, route);
                }
                Some(_) => {
                    let name = domain::normalise(key);
                    if name.is_empty() {
                        return Err(error("empty domain"));
                    }
                    routes.domains.insert(name, route);
                }
            }
        }
        Ok(routes)
    }

    /// True if the file names no route.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
            && self.suffixes.is_empty()
            && self.default.is_none()
    }

    /// The route of a normalised domain (as [`domain::normalise`] gives
    /// it), or `None` when no line matches it: the whole domain, else the
    /// longest suffix rule, else the default route. Linear in the
    /// domain's length.
    ///
    /// [`domain::normalise`]: crate::domain::normalise
    pub fn route(&self, domain: &[u8]) -> Option<Route> {
        if let Some(route) = self.domains.get(domain) {
            return Some(route.clone());
        }
        let dots = domain.iter().enumerate().filter(|&(_, &b)| b == b'.');
        for (dot, _) in dots {
            let suffix = &domain[dot + 1..];
            if suffix.len() > self.suffix_max {
                continue;
            }
            if let Some(route) = self.suffixes.get(suffix) {
                return Some(route.clone());
            }
        }
        self.default.clone()
    }
}

/// `RELAY`, `RELAY:PORT` or nothing.
fn parse_route(value: &[u8], line: usize) -> Result<Route, &'static str> {
    let (relay, port) = match value.iter().position(|&b| b == b':') {
        Some(colon) => (&value[..colon], Some(port(&value[colon + 1..])?)),
        None => (value, None),
    };
    if relay.is_empty() {
        if port.is_some() {
            return Err("a port needs a relay host before it");
        }
        return Ok(Route { relay: None, port: None, line });
    }
    let relay = domain::normalise(relay);
    if relay.is_empty() {
        return Err("empty relay host");
    }
    Ok(Route { relay: Some(relay), port, line })
}

/// A decimal port, 1 to 65535.
fn port(text: &[u8]) -> Result<u16, &'static str> {
    const BAD: &str = "a port is a number from 1 to 65535";
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::normalise;

    fn parse(text: &str) -> Routes {
        Routes::parse(text.as_bytes()).unwrap()
    }

    fn relay(host: &str, port: Option<u16>, line: usize) -> Option<Route> {
        Some(Route { relay: Some(host.as_bytes().to_vec()), port, line })
    }

    fn by_mx(line: usize) -> Option<Route> {
        Some(Route { relay: None, port: None, line })
    }

    /// Checks `route` of each domain, normalised first as the supervisor
    /// does.
    fn check(routes: &Routes, table: &[(&str, Option<Route>)]) {
        for (domain, want) in table {
            let got = routes.route(&normalise(domain.as_bytes()));
            assert_eq!(&got, want, "{domain}");
        }
    }

    /// The module docs' example.
    const EXAMPLE: &str = "\
example.com:relay.example.net
example.org:relay.example.net:2525
.example.com:[192.0.2.1]
:smarthost.example.net
local.example:
";

    #[test]
    fn the_example_file() {
        let routes = parse(EXAMPLE);
        assert!(!routes.is_empty());
        check(
            &routes,
            &[
                ("example.com", relay("relay.example.net", None, 1)),
                ("example.org", relay("relay.example.net", Some(2525), 2)),
                ("sub.example.com", relay("[192.0.2.1]", None, 3)),
                ("a.b.example.com", relay("[192.0.2.1]", None, 3)),
                ("other.test", relay("smarthost.example.net", None, 4)),
                // An empty relay is a match: by MX, the default not used.
                ("local.example", by_mx(5)),
                // A suffix route names subdomains only.
                ("sub.example.org", relay("smarthost.example.net", None, 4)),
            ],
        );
    }

    /// qmail-remote's order: the whole host, then the suffix at each '.'
    /// from the left, then the empty key.
    #[test]
    fn qmails_order_whole_then_longest_suffix_then_default() {
        let routes = parse(
            ":default.test\n.com:com.test\n.example.com:ex.test\n\
             .b.example.com:b.test\na.b.example.com:whole.test\n",
        );
        check(
            &routes,
            &[
                ("a.b.example.com", relay("whole.test", None, 5)),
                ("x.a.b.example.com", relay("b.test", None, 4)),
                ("c.b.example.com", relay("b.test", None, 4)),
                ("b.example.com", relay("ex.test", None, 3)),
                ("example.com", relay("com.test", None, 2)),
                ("com", relay("default.test", None, 1)),
                ("org", relay("default.test", None, 1)),
                ("xexample.com", relay("com.test", None, 2)),
            ],
        );
        // Without a default route, an unnamed domain has none.
        let routes = parse("example.com:relay.test\n");
        check(&routes, &[("other.test", None), ("a.example.com", None)]);
        assert!(Routes::absent().is_empty());
        assert_eq!(Routes::absent().route(b"example.com"), None);
        assert_eq!(parse("# only a comment\n\n"), Routes::absent());
    }

    #[test]
    fn an_empty_relay_stops_the_search() {
        // qmail-remote stops at the first key found, empty or not.
        let routes = parse(":smart.test\n.example.com:\nexample.com:\n");
        check(
            &routes,
            &[
                ("a.example.com", by_mx(2)),
                ("example.com", by_mx(3)),
                ("other.test", relay("smart.test", None, 1)),
            ],
        );
    }

    #[test]
    fn case_spellings_and_relays_are_normalised() {
        let routes = parse(
            "Example.COM.:Relay.Example.NET.\n.Sub.Example.Org.:R2.test\n\
             ip.test:192.0.2.1:25\nbr.test:[192.0.2.01]\n",
        );
        check(
            &routes,
            &[
                ("EXAMPLE.com", relay("relay.example.net", None, 1)),
                ("ex\\097mple.com.", relay("relay.example.net", None, 1)),
                ("x.SUB.example.org", relay("r2.test", None, 2)),
                ("sub.example.org", None),
                // An IP literal relay, however written, is `[a.b.c.d]`.
                ("ip.test", relay("[192.0.2.1]", Some(25), 3)),
                ("br.test", relay("[192.0.2.1]", None, 4)),
            ],
        );
    }

    #[test]
    fn an_ip_literal_domain_is_routed_like_any() {
        // qmail-remote looks every host up in smtproutes, literals too.
        let routes = parse("[192.0.2.1]:relay.test\n:smart.test\n");
        check(
            &routes,
            &[
                ("[192.0.2.1]", relay("relay.test", None, 1)),
                ("192.0.2.1", relay("relay.test", None, 1)),
                ("[192.0.2.2]", relay("smart.test", None, 2)),
            ],
        );
    }

    #[test]
    fn lenient_where_qmail_remote_is() {
        // A line without ':' is skipped; the later of two lines wins;
        // the fields are not trimmed, so a blank makes another name.
        let routes = parse(
            "no colon here\n  example.com:first.test\nEXAMPLE.com:last.test\n\
             spaced.test :x.test\n# c:d\n\r\n",
        );
        check(
            &routes,
            &[
                ("example.com", relay("last.test", None, 3)),
                ("spaced.test", None),
                ("c", None),
            ],
        );
        assert_eq!(
            routes.route(b"spaced.test\\032"),
            relay("x.test", None, 4)
        );
    }

    #[test]
    fn each_error_names_its_line_and_what_to_fix() {
        const PORT: &str = "a port is a number from 1 to 65535";
        let table: &[(&str, usize, &str, &str)] = &[
            ("a.test:r.test:", 1, "a.test:r.test:", PORT),
            ("a.test:r.test:0", 1, "a.test:r.test:0", PORT),
            ("a.test:r.test:65536", 1, "a.test:r.test:65536", PORT),
            (
                "a.test:r:99999999999999999999",
                1,
                "a.test:r:99999999999999999999",
                PORT,
            ),
            ("a.test:r.test:2x", 1, "a.test:r.test:2x", PORT),
            ("a.test:r.test: 25", 1, "a.test:r.test: 25", PORT),
            ("a.test:r.test:25:1", 1, "a.test:r.test:25:1", PORT),
            (
                "a.test::25",
                1,
                "a.test::25",
                "a port needs a relay host before it",
            ),
            ("a.test:\\", 1, "a.test:\\", "empty relay host"),
            (".:r.test", 1, ".:r.test", "empty domain after '.'"),
            ("..:r.test", 1, "..:r.test", "empty domain after '.'"),
            ("\\:r.test", 1, "\\:r.test", "empty domain"),
            ("ok.test:r.test\n# c\n b.test:r:x \r\n", 3, "b.test:r:x", PORT),
        ];
        for &(text, line, quoted, why) in table {
            let got = Routes::parse(text.as_bytes()).unwrap_err();
            let want = ControlError::new(line, quoted.as_bytes(), why);
            assert_eq!(got, want, "{text:?}");
        }
        assert_eq!(
            Routes::parse(b"a.test:r.test:0").unwrap_err().to_string(),
            "line 1: a.test:r.test:0: a port is a number from 1 to 65535"
        );
        // The bounds themselves are ports.
        let routes = parse("a.test:r.test:1\nb.test:r.test:65535\n");
        check(
            &routes,
            &[
                ("a.test", relay("r.test", Some(1), 1)),
                ("b.test", relay("r.test", Some(65535), 2)),
            ],
        );
    }

    /// A long hostile domain costs one pass, as in the limits file.
    #[test]
    fn a_100_kb_domain_is_routed_in_linear_time() {
        let routes = parse(".a.test:r.test\n");
        let start = std::time::Instant::now();
        let domain = normalise(&b"a.".repeat(50_000));
        assert_eq!(routes.route(&domain), None);
        let domain =
            normalise(&[b"b.".repeat(50_000).as_slice(), b"a.test"].concat());
        assert_eq!(routes.route(&domain), relay("r.test", None, 1));
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }
}
