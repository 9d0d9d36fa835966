//! SPIFFE workload identities, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! This is the only identity form Ambit issues or accepts. Parsing is strict: anything that is not
//! exactly this shape is rejected, because an identity is compared for authorization and a lenient
//! parser is how two different strings come to mean the same principal.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error("identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<sa>")]
    Shape(String),
    #[error("identity {id:?} has an invalid {part}: {why}")]
    Part {
        id: String,
        part: &'static str,
        why: &'static str,
    },
}

/// A parsed SPIFFE identity. Cheap to clone; compares and hashes by its parts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl Identity {
    /// Builds an identity from its parts, validating each one.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let id = Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        id.validate()?;
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    fn validate(&self) -> Result<(), IdentityError> {
        let err = |part, why| IdentityError::Part {
            id: self.to_string(),
            part,
            why,
        };
        // SPIFFE trust domains: lowercase letters, digits, '.', '-', '_' (SPIFFE ID spec §2.1).
        if self.trust_domain.is_empty() || self.trust_domain.len() > 255 {
            return Err(err("trust domain", "must be 1 to 255 characters"));
        }
        if !self
            .trust_domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
        {
            return Err(err(
                "trust domain",
                "may hold only lowercase letters, digits, '.', '-' and '_'",
            ));
        }
        // Namespaces and service accounts are Kubernetes names: a DNS-1123 subdomain at most.
        for (part, value) in [
            ("namespace", &self.namespace),
            ("service account", &self.service_account),
        ] {
            if value.is_empty() || value.len() > 253 {
                return Err(err(part, "must be 1 to 253 characters"));
            }
            if !value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            {
                return Err(err(
                    part,
                    "may hold only lowercase letters, digits, '-' and '.'",
                ));
            }
            let (first, last) = (value.as_bytes()[0], value.as_bytes()[value.len() - 1]);
            if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
                return Err(err(part, "must start and end with a letter or digit"));
            }
        }
        Ok(())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(s.to_string()))?;
        let shape = || IdentityError::Shape(s.to_string());
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(shape());
        };
        Identity::new(td, ns, sa)
    }
}

impl TryFrom<&str> for Identity {
    type Error = IdentityError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: Identity = s.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), s);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "cluster.local/ns/default/sa/x",
            "http://cluster.local/ns/default/sa/x",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa",
            "spiffe://cluster.local/ns/default/sa/",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe:///ns/default/sa/x",
            "spiffe://cluster.local/sa/x/ns/default",
            "spiffe://cluster.local/ns/default/sa/x/extra",
            "spiffe://cluster.local/ns/default/sa/x/",
            "spiffe://Cluster.Local/ns/default/sa/x",
            "spiffe://cluster.local/ns/Default/sa/x",
            "spiffe://cluster.local/ns/def ault/sa/x",
            "spiffe://cluster.local/ns/-default/sa/x",
            "spiffe://cluster.local/ns/default/sa/x-",
            "spiffe://cluster.local:8080/ns/default/sa/x",
            "spiffe://user@cluster.local/ns/default/sa/x",
            "spiffe://cluster.local/ns/default/sa/x?q=1",
            "spiffe://cluster.local/ns/default/sa/x#frag",
            "spiffe://cluster.local/ns/../sa/x",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn error_names_the_problem() {
        let err = "spiffe://cluster.local/ns/Default/sa/x"
            .parse::<Identity>()
            .unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
    }
}
