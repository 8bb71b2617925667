//! `ConfigMapRef`: the one ConfigMap a proxy follows, parsed from `NAMESPACE/NAME`.

use std::fmt;
use std::str::FromStr;

/// The namespace and name of the ConfigMap that holds the proxy's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigMapRef {
    /// Namespace of the ConfigMap (a DNS-1123 label).
    pub namespace: String,
    /// Name of the ConfigMap (a DNS-1123 subdomain).
    pub name: String,
}

/// Why a `--configmap` argument is not a valid `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid ConfigMap reference {input:?}: {problem} (expected NAMESPACE/NAME, e.g. default/canary-proxy)"
)]
pub struct ParseConfigMapRefError {
    /// The text as given.
    input: String,
    /// What is wrong with it.
    problem: String,
}

impl ConfigMapRef {
    /// Builds a reference from its parts, validating both as Kubernetes names.
    pub fn new(namespace: &str, name: &str) -> Result<Self, ParseConfigMapRefError> {
        format!("{namespace}/{name}").parse()
    }
}

impl FromStr for ConfigMapRef {
    type Err = ParseConfigMapRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |problem: String| ParseConfigMapRefError {
            input: input.to_owned(),
            problem,
        };
        let (namespace, name) = input
            .split_once('/')
            .ok_or_else(|| fail("no '/' between namespace and name".into()))?;
        check_name("namespace", namespace, 63, false).map_err(fail)?;
        check_name("name", name, 253, true).map_err(fail)?;
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Checks a DNS-1123 label (namespaces) or subdomain (object names), so a typo is
/// reported at startup instead of as a watch that never finds anything.
fn check_name(what: &str, value: &str, max_len: usize, dots: bool) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if value.len() > max_len {
        return Err(format!("the {what} is longer than {max_len} characters"));
    }
    let allowed =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "the {what} contains {bad:?}; only lowercase letters, digits, '-'{} are allowed",
            if dots { " and '.'" } else { "" }
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        return Err(format!(
            "the {what} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_and_name() {
        let r: ConfigMapRef = "prod/canary-proxy.v2".parse().unwrap();
        assert_eq!(r.namespace, "prod");
        assert_eq!(r.name, "canary-proxy.v2");
        assert_eq!(r.to_string(), "prod/canary-proxy.v2");
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "name-only",
            "/name",
            "ns/",
            "ns/a/b",
            "Prod/cm",
            "ns/-cm",
            "n.s/cm",
            "ns/cm_1",
        ] {
            let err = bad.parse::<ConfigMapRef>().unwrap_err().to_string();
            assert!(err.contains("expected NAMESPACE/NAME"), "{bad:?}: {err}");
        }
        let long = format!("ns/{}", "a".repeat(254));
        assert!(long.parse::<ConfigMapRef>().is_err());
    }
}
