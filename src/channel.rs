//! Channel names, namespaces and the tenant-scoped channel key.
//!
//! Clients name channels without their tenant; every lookup in the hub, the
//! broker and presence goes through a [`ChannelKey`] that carries the tenant
//! from the verified token (or the API key), so no name can reach another
//! tenant's data. Parsing happens here, at the edge; the rest trusts the types.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::config::{ChannelsConfig, NamespaceOptions};
use crate::protocol::ErrorCode;

/// A channel inside one tenant. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    tenant: Arc<str>,
    name: Arc<str>,
}

impl ChannelKey {
    /// Both parts must already be validated (tenant by the token or config,
    /// name by [`ChannelRules::resolve`]).
    pub fn new(tenant: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            tenant: tenant.into(),
            name: name.into(),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The name the client uses.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// A flat form for external keys: tenant names hold no `.`, so the first
    /// `.` separates tenant and channel unambiguously.
    pub fn flat(&self) -> String {
        format!("{}.{}", self.tenant, self.name)
    }

    pub fn from_flat(flat: &str) -> Option<Self> {
        let (tenant, name) = flat.split_once('.')?;
        Some(Self::new(tenant, name))
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

/// What a channel name says about itself.
#[derive(Debug, Clone)]
pub struct ResolvedChannel {
    pub options: Arc<NamespaceOptions>,
    pub namespace: Option<String>,
    /// `$` channels need a subscription token.
    pub private: bool,
    /// `name#42,43` channels admit only these users.
    pub allowed_users: Option<Vec<String>>,
}

impl ResolvedChannel {
    /// How this channel keeps history.
    pub fn retention(&self) -> crate::broker::HistoryRetention {
        crate::broker::HistoryRetention {
            size: self.options.history_size,
            ttl: self.options.history_ttl,
            meta_ttl: self.options.history_meta_ttl,
        }
    }
}

/// Namespace table and name rules, built once from the configuration.
#[derive(Debug, Clone)]
pub struct ChannelRules {
    without_namespace: Arc<NamespaceOptions>,
    namespaces: BTreeMap<String, Arc<NamespaceOptions>>,
    max_length: usize,
}

impl ChannelRules {
    pub fn new(config: &ChannelsConfig, max_length: usize) -> Self {
        Self {
            without_namespace: Arc::new(config.without_namespace.clone()),
            namespaces: config
                .namespaces
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            max_length,
        }
    }

    /// Validates a client-given channel name and finds its namespace.
    /// Errors are the protocol's: 107 for a bad name, 102 for an unknown namespace.
    pub fn resolve(&self, name: &str) -> Result<ResolvedChannel, ErrorCode> {
        if name.is_empty() || name.len() > self.max_length {
            return Err(ErrorCode::BadRequest);
        }
        if !name.bytes().all(|b| b.is_ascii_graphic()) || name.contains(['*', '&']) {
            return Err(ErrorCode::BadRequest);
        }
        let private = name.starts_with('$');
        let rest = name.trim_start_matches('$');
        let (namespace, options) = match rest.split_once(':') {
            Some((ns, _)) => {
                let options = self.namespaces.get(ns).ok_or(ErrorCode::UnknownChannel)?;
                (Some(ns.to_owned()), options.clone())
            }
            None => (None, self.without_namespace.clone()),
        };
        let allowed_users = match rest.rsplit_once('#') {
            Some((_, users)) => {
                if !options.allow_user_limited_channels {
                    return Err(ErrorCode::PermissionDenied);
                }
                Some(
                    users
                        .split(',')
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            }
            None => None,
        };
        Ok(ResolvedChannel {
            options,
            namespace,
            private,
            allowed_users,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ChannelRules {
        ChannelRules::new(&ChannelsConfig::default(), 255)
    }

    #[test]
    fn channel_without_namespace_uses_the_default_options() {
        let r = rules().resolve("chat").unwrap();
        assert!(r.namespace.is_none() && r.options.presence && r.options.allow_publish);
    }

    #[test]
    fn known_namespace_is_found_and_unknown_is_102() {
        let r = rules().resolve("record:deals:42").unwrap();
        assert_eq!(r.namespace.as_deref(), Some("record"));
        assert!(!r.options.allow_publish);
        assert_eq!(
            rules().resolve("nope:x").unwrap_err(),
            ErrorCode::UnknownChannel
        );
    }

    #[test]
    fn private_and_user_limited_channels_are_recognised() {
        let r = rules().resolve("$record:deals:1").unwrap();
        assert!(r.private);
        assert_eq!(r.namespace.as_deref(), Some("record"));
        let r = rules().resolve("dialog#42,43").unwrap();
        assert_eq!(
            r.allowed_users,
            Some(vec!["42".to_owned(), "43".to_owned()])
        );
    }

    #[test]
    fn too_long_empty_or_odd_names_are_107() {
        assert_eq!(
            rules().resolve(&"a".repeat(256)).unwrap_err(),
            ErrorCode::BadRequest
        );
        assert_eq!(rules().resolve("").unwrap_err(), ErrorCode::BadRequest);
        assert_eq!(rules().resolve("a b").unwrap_err(), ErrorCode::BadRequest);
        assert_eq!(rules().resolve("a*").unwrap_err(), ErrorCode::BadRequest);
        assert_eq!(rules().resolve("é").unwrap_err(), ErrorCode::BadRequest);
    }

    #[test]
    fn flat_key_round_trips() {
        let k = ChannelKey::new("acme", "record:deals:1.5");
        assert_eq!(ChannelKey::from_flat(&k.flat()), Some(k));
    }
}
