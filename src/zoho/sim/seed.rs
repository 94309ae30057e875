//! The seed file: the org, users, OAuth clients, modules with their fields,
//! and starting records the emulator loads at start.
//!
//! The format is documented in `src/zoho/README.md`; the default seed
//! (`seed.json` beside this file) is compiled in, so `synchub zoho-sim` runs
//! with no file at all.

use serde_json::{Map, Value};

use super::model::{ModuleSeed, User};

/// The seed compiled into the binary.
pub const DEFAULT_SEED: &str = include_str!("seed.json");

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read the seed file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the seed is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the seed is not valid: {0}")]
    Invalid(String),
}

/// An OAuth client the token endpoint accepts, with the refresh tokens and
/// one-time grant codes it already holds.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct OAuthClientSeed {
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub refresh_tokens: Vec<String>,
    #[serde(default)]
    pub grant_codes: Vec<String>,
    /// The user the client's tokens act as; the first user when omitted.
    #[serde(default)]
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Seed {
    /// Returned as `GET /crm/v8/org` `org[0]`; `id` and `zgid` are expected.
    pub org: Map<String, Value>,
    pub users: Vec<User>,
    pub oauth_clients: Vec<OAuthClientSeed>,
    pub modules: Vec<ModuleSeed>,
}

impl Seed {
    pub fn parse(text: &str) -> Result<Self, SeedError> {
        let seed: Seed = serde_json::from_str(text)?;
        seed.check()?;
        Ok(seed)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, SeedError> {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn default_seed() -> Self {
        // The compiled-in seed is checked by a unit test, so this cannot fail
        // in a build that passed its tests; an empty world is the fallback.
        Self::parse(DEFAULT_SEED).unwrap_or_else(|_| Self {
            org: Map::new(),
            users: vec![],
            oauth_clients: vec![],
            modules: vec![],
        })
    }

    fn check(&self) -> Result<(), SeedError> {
        if self.users.is_empty() {
            return Err(SeedError::Invalid("at least one user is required".into()));
        }
        for client in &self.oauth_clients {
            if let Some(user) = &client.user_id
                && !self.users.iter().any(|u| &u.id == user)
            {
                return Err(SeedError::Invalid(format!(
                    "oauth client {} names unknown user {user}",
                    client.client_id
                )));
            }
        }
        for module in &self.modules {
            let mut seen = std::collections::HashSet::new();
            for field in &module.fields {
                if !seen.insert(field.api_name.as_str()) {
                    return Err(SeedError::Invalid(format!(
                        "module {} declares field {} twice",
                        module.api_name, field.api_name
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_seed_parses_and_has_the_four_sync_modules() {
        let seed = Seed::parse(DEFAULT_SEED).unwrap();
        for name in ["Deals", "Contacts", "Accounts", "Leads"] {
            assert!(seed.modules.iter().any(|m| m.api_name == name), "{name}");
        }
        assert!(!seed.oauth_clients[0].refresh_tokens.is_empty());
    }

    #[test]
    fn fresh_ids_never_collide_with_seeded_ones() {
        let mut seed = Seed::parse(DEFAULT_SEED).unwrap();
        seed.modules[0].records[0].insert("id".into(), "9000000000000000001".into());
        let mut world =
            super::super::state::World::from_seed(&seed, time::OffsetDateTime::UNIX_EPOCH);
        assert!(world.next_id() > 9_000_000_000_000_000_001);
    }

    #[test]
    fn a_seed_without_users_is_refused() {
        let err =
            Seed::parse(r#"{"org":{},"users":[],"oauth_clients":[],"modules":[]}"#).unwrap_err();
        assert!(err.to_string().contains("user"));
    }
}
