//! Who a peer is, as its certificate says.
//!
//! Identities live in URI subject alternative names of certificates issued by
//! the fleet CA:
//!
//! - an agent: `urn:vitals:endpoint:<endpoint-id>`
//! - a specialist: `urn:vitals:specialist:<name>` plus `urn:vitals:role:<role>`
//!
//! The collector takes an endpoint's identity from here and never from a
//! message, so an agent cannot speak for another workstation.

use std::fmt;
use std::str::FromStr;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub const ENDPOINT_URN: &str = "urn:vitals:endpoint:";
pub const SPECIALIST_URN: &str = "urn:vitals:specialist:";
pub const ROLE_URN: &str = "urn:vitals:role:";

/// A validated endpoint ID: 1 to 64 characters of ASCII letters, digits,
/// `.`, `_` and `-`, starting with a letter or digit. Case is kept, since
/// Windows host names are often upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(String);

impl EndpointId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by endpoint be looked up with a plain `&str`.
impl std::borrow::Borrow<str> for EndpointId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EndpointId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate_name(s)
            .map(|()| EndpointId(s.to_owned()))
            .map_err(|why| IdentityError::BadName {
                name: s.to_owned(),
                why,
            })
    }
}

impl EndpointId {
    /// The endpoint ID a host name gives: lower case, every character an
    /// ID may not hold replaced by `-`, at most 64 characters.
    pub fn from_hostname(host: &str) -> Result<Self, IdentityError> {
        let mut id: String = host
            .trim()
            .trim_end_matches('.')
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        id = id.trim_start_matches(['.', '_', '-']).to_owned();
        id.truncate(64);
        id.parse()
    }
}

/// Checks a name used as an endpoint ID or a specialist name.
fn validate_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may hold only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// What a specialist may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads endpoints, tickets and results.
    Viewer,
    /// Also runs diagnostics and works tickets.
    Specialist,
    /// Everything.
    Admin,
}

crate::text_enum!(Role {
    Viewer => "viewer",
    Specialist => "specialist",
    Admin => "admin",
});

impl Role {
    /// Whether a holder of `self` may do what needs `required`.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

/// A peer as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Endpoint(EndpointId),
    Specialist { name: String, role: Role },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Endpoint(id) => write!(f, "endpoint {id}"),
            Identity::Specialist { name, role } => write!(f, "specialist {name} ({role})"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IdentityError {
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(#[source] x509_parser::error::X509Error),
    #[error("certificate names no Vitals identity (no urn:vitals: URI SAN)")]
    NoIdentity,
    #[error("certificate names more than one Vitals identity")]
    Ambiguous,
    #[error("specialist certificate has no role (urn:vitals:role:)")]
    MissingRole,
    #[error("unknown role \"{0}\" (expected viewer, specialist or admin)")]
    BadRole(String),
    #[error("invalid name \"{name}\": {why}")]
    BadName { name: String, why: &'static str },
}

impl Identity {
    /// The URI SANs a certificate for this identity must carry.
    pub fn san_uris(&self) -> Vec<String> {
        match self {
            Identity::Endpoint(id) => vec![format!("{ENDPOINT_URN}{id}")],
            Identity::Specialist { name, role } => {
                vec![
                    format!("{SPECIALIST_URN}{name}"),
                    format!("{ROLE_URN}{role}"),
                ]
            }
        }
    }

    /// Makes a specialist identity after checking the name.
    pub fn specialist(name: &str, role: Role) -> Result<Self, IdentityError> {
        validate_name(name).map_err(|why| IdentityError::BadName {
            name: name.to_owned(),
            why,
        })?;
        Ok(Identity::Specialist {
            name: name.to_owned(),
            role,
        })
    }

    /// Reads the identity out of a DER certificate. Chain validation is the
    /// TLS layer's job; this only interprets an already-trusted certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        use x509_parser::error::X509Error;
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
            IdentityError::BadCertificate(match e {
                x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
                x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
            })
        })?;
        let san = cert
            .subject_alternative_name()
            .map_err(IdentityError::BadCertificate)?;
        let uris = san
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Self::from_uris(&uris)
    }

    fn from_uris(uris: &[&str]) -> Result<Self, IdentityError> {
        let mut endpoint = None;
        let mut specialist = None;
        let mut role = None;
        for uri in uris {
            let clash = if let Some(id) = uri.strip_prefix(ENDPOINT_URN) {
                endpoint.replace(id.parse::<EndpointId>()?).is_some()
            } else if let Some(name) = uri.strip_prefix(SPECIALIST_URN) {
                specialist.replace(name).is_some()
            } else if let Some(r) = uri.strip_prefix(ROLE_URN) {
                role.replace(
                    r.parse::<Role>()
                        .map_err(|e| IdentityError::BadRole(e.name))?,
                )
                .is_some()
            } else {
                false
            };
            if clash {
                return Err(IdentityError::Ambiguous);
            }
        }
        match (endpoint, specialist) {
            (Some(_), Some(_)) => Err(IdentityError::Ambiguous),
            (Some(id), None) => Ok(Identity::Endpoint(id)),
            (None, Some(name)) => {
                Identity::specialist(name, role.ok_or(IdentityError::MissingRole)?)
            }
            (None, None) => Err(IdentityError::NoIdentity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids() {
        for ok in ["ws-0001", "DISPATCH07", "a", "kiosk.lobby_2"] {
            assert!(ok.parse::<EndpointId>().is_ok(), "{ok}");
        }
        for bad in ["", "-lead", ".x", "has space", "slash/x", &"x".repeat(65)] {
            assert!(bad.parse::<EndpointId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Specialist));
        assert!(Role::Specialist.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Specialist));
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn identities_from_uris() {
        let check = |uris: &[&str]| Identity::from_uris(uris);
        assert_eq!(
            check(&["urn:vitals:endpoint:ws-1"]),
            Ok(Identity::Endpoint("ws-1".parse().unwrap()))
        );
        assert_eq!(
            check(&["urn:vitals:specialist:ana", "urn:vitals:role:viewer"]),
            Ok(Identity::Specialist {
                name: "ana".into(),
                role: Role::Viewer
            })
        );
        assert_eq!(
            check(&["urn:vitals:specialist:ana"]),
            Err(IdentityError::MissingRole)
        );
        assert_eq!(check(&["https://example"]), Err(IdentityError::NoIdentity));
        assert_eq!(
            check(&["urn:vitals:endpoint:a", "urn:vitals:endpoint:b"]),
            Err(IdentityError::Ambiguous)
        );
        assert_eq!(
            check(&["urn:vitals:endpoint:a", "urn:vitals:specialist:b"]),
            Err(IdentityError::Ambiguous)
        );
        assert!(matches!(
            check(&["urn:vitals:endpoint:bad id"]),
            Err(IdentityError::BadName { .. })
        ));
    }

    #[test]
    fn san_uris_round_trip() {
        let id = Identity::specialist("ana", Role::Admin).unwrap();
        let uris = id.san_uris();
        let refs: Vec<&str> = uris.iter().map(String::as_str).collect();
        assert_eq!(Identity::from_uris(&refs), Ok(id));
    }
}
