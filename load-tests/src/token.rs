//! Connection JWTs minted locally with the hub's HS256 secret.
//!
//! The load generator plays both the application backend (which would mint
//! tokens) and the clients, so it needs the secret, never the hub's help.
//! Only `sub` and `exp` are set: no `tenant` claim puts every connection in
//! tenant `default`, the tenant `SYNCHUB_API_KEY` publishes to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

pub struct TokenMinter {
    key: EncodingKey,
    exp: u64,
}

impl TokenMinter {
    /// Tokens valid for `lifetime` from now; pick it longer than the run so no
    /// connection has to refresh mid-measurement.
    pub fn new(secret: &str, lifetime: Duration) -> Result<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("system clock before 1970")?;
        Ok(Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            exp: (now + lifetime).as_secs(),
        })
    }

    pub fn mint(&self, user: &str) -> Result<String> {
        let claims = Claims {
            sub: user,
            exp: self.exp,
        };
        jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .context("signing a connection token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Decoded {
        sub: String,
        exp: u64,
    }

    #[test]
    fn a_minted_token_verifies_with_the_same_secret_as_hs256() {
        let minter = TokenMinter::new("s3cret", Duration::from_secs(600)).unwrap();
        let token = minter.mint("load-7").unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
        let data = jsonwebtoken::decode::<Decoded>(
            &token,
            &DecodingKey::from_secret(b"s3cret"),
            &Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .unwrap();
        assert_eq!(data.claims.sub, "load-7");
        assert!(data.claims.exp > 0);
    }
}
