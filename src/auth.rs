//! Connection and subscription tokens: verification and minting.
//!
//! Tokens are JWTs signed with the HMAC secret (HS256/384/512) or checked
//! against a configured RSA or EC public key (RS256/384/512, ES256/384).
//! Expiry is judged here rather than by the JWT library so that an expired
//! token can be told apart from an invalid one: the protocol answers the two
//! differently (109 versus a 3500 disconnect).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{DEFAULT_TENANT, valid_tenant_name};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// A public key for RS* or ES* tokens.
#[derive(Clone)]
pub struct PublicKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl PublicKey {
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self {
                key,
                algorithms: vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self {
                key,
                algorithms: vec![Algorithm::ES256, Algorithm::ES384],
            });
        }
        Err(KeyError(
            "not a PEM encoded RSA or EC public key".to_owned(),
        ))
    }
}

/// Claims of a connection token.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConnectClaims {
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    /// Connection expiry separate from `exp` (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<i64>,
    /// Must be absent: a subscription token is not a connection token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<serde_json::Value>,
}

/// Claims of a subscription token (for `$` channels).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SubscribeClaims {
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

/// A verified connection identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectToken {
    pub user: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub info: Bytes,
    /// Unix seconds after which the connection must refresh; `None` never expires.
    pub expires_at: Option<i64>,
}

/// A verified subscription grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeToken {
    pub user: String,
    pub channel: String,
    pub client: Option<String>,
    pub info: Bytes,
    pub data: Bytes,
    pub expires_at: Option<i64>,
}

/// Verifies tokens with the configured keys.
#[derive(Clone)]
pub struct TokenVerifier {
    hmac: Option<DecodingKey>,
    public: Option<PublicKey>,
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl TokenVerifier {
    pub fn new(hmac_secret: Option<&str>, public: Option<PublicKey>) -> Self {
        Self {
            hmac: hmac_secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("malformed token: {e}")))?;
        let (key, algorithms) = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => (
                self.hmac
                    .as_ref()
                    .ok_or_else(|| TokenError::Invalid("HMAC tokens are not accepted".into()))?,
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            ),
            alg => {
                let public = self
                    .public
                    .as_ref()
                    .filter(|p| p.algorithms.contains(&alg))
                    .ok_or_else(|| {
                        TokenError::Invalid(format!("algorithm {alg:?} is not accepted"))
                    })?;
                (&public.key, public.algorithms.clone())
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = algorithms;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<T>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Verifies a connection token at `now` (unix seconds).
    pub fn verify_connect(&self, token: &str, now: i64) -> Result<ConnectToken, TokenError> {
        let claims: ConnectClaims = self.decode(token)?;
        if claims.channel.is_some() {
            return Err(TokenError::Invalid(
                "a subscription token cannot open a connection".into(),
            ));
        }
        check_times(claims.exp, claims.nbf, now)?;
        let tenant = claims.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_owned());
        if !valid_tenant_name(&tenant) {
            return Err(TokenError::Invalid(format!("invalid tenant `{tenant}`")));
        }
        let expires_at = match claims.expire_at {
            Some(0) => None,
            Some(at) => Some(at),
            None => claims.exp,
        };
        Ok(ConnectToken {
            user: claims.sub,
            tenant,
            roles: claims.roles,
            info: info_bytes(claims.info, claims.b64info)?,
            expires_at,
        })
    }

    /// Verifies a subscription token at `now` (unix seconds).
    pub fn verify_subscribe(&self, token: &str, now: i64) -> Result<SubscribeToken, TokenError> {
        let claims: SubscribeClaims = self.decode(token)?;
        check_times(claims.exp, claims.nbf, now)?;
        if claims.channel.is_empty() {
            return Err(TokenError::Invalid(
                "subscription token without channel".into(),
            ));
        }
        let expires_at = match claims.expire_at {
            Some(0) => None,
            Some(at) => Some(at),
            None => claims.exp,
        };
        Ok(SubscribeToken {
            user: claims.sub,
            channel: claims.channel,
            client: claims.client.filter(|c| !c.is_empty()),
            info: info_bytes(claims.info, claims.b64info)?,
            data: claims
                .data
                .map(|d| Bytes::from(d.get().as_bytes().to_vec()))
                .unwrap_or_default(),
            expires_at,
        })
    }
}

fn check_times(exp: Option<i64>, nbf: Option<i64>, now: i64) -> Result<(), TokenError> {
    if let Some(exp) = exp
        && exp <= now
    {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = nbf
        && nbf > now
    {
        return Err(TokenError::Invalid("token not valid yet".into()));
    }
    Ok(())
}

fn info_bytes(info: Option<Box<RawValue>>, b64info: Option<String>) -> Result<Bytes, TokenError> {
    if let Some(info) = info {
        return Ok(Bytes::from(info.get().as_bytes().to_vec()));
    }
    if let Some(b64) = b64info {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| TokenError::Invalid("b64info is not base64".into()))?;
        return Ok(Bytes::from(raw));
    }
    Ok(Bytes::new())
}

/// Mints an HS256 token for any claims (used by `synchub token` and tests).
pub fn mint<T: Serialize>(secret: &str, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-0123456789";

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(Some(SECRET), None)
    }

    #[test]
    fn valid_token_gives_user_tenant_roles_and_info() {
        let claims = ConnectClaims {
            sub: "42".into(),
            exp: Some(now_unix() + 60),
            tenant: Some("acme".into()),
            roles: vec!["admin".into()],
            info: Some(RawValue::from_string("{\"name\":\"Ana\"}".into()).unwrap()),
            ..Default::default()
        };
        let t = verifier()
            .verify_connect(&mint(SECRET, &claims).unwrap(), now_unix())
            .unwrap();
        assert_eq!(t.user, "42");
        assert_eq!(t.tenant, "acme");
        assert_eq!(t.roles, vec!["admin"]);
        assert_eq!(t.info.as_ref(), b"{\"name\":\"Ana\"}");
        assert!(t.expires_at.is_some());
    }

    #[test]
    fn token_without_tenant_belongs_to_default() {
        let t = verifier()
            .verify_connect(
                &mint(
                    SECRET,
                    &ConnectClaims {
                        sub: "u".into(),
                        ..Default::default()
                    },
                )
                .unwrap(),
                now_unix(),
            )
            .unwrap();
        assert_eq!(t.tenant, "default");
        assert_eq!(t.expires_at, None);
    }

    #[test]
    fn expired_token_is_told_apart_from_invalid() {
        let expired = mint(
            SECRET,
            &ConnectClaims {
                sub: "u".into(),
                exp: Some(now_unix() - 1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            verifier().verify_connect(&expired, now_unix()),
            Err(TokenError::Expired)
        );
        let forged = mint(
            "another-secret-0000000",
            &ConnectClaims {
                sub: "u".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            verifier().verify_connect(&forged, now_unix()),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verifier().verify_connect("not.a.jwt", now_unix()),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn subscription_token_cannot_open_a_connection() {
        let token = mint(
            SECRET,
            &SubscribeClaims {
                sub: "u".into(),
                channel: "$x".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            verifier().verify_connect(&token, now_unix()),
            Err(TokenError::Invalid(_))
        ));
        let sub = verifier().verify_subscribe(&token, now_unix()).unwrap();
        assert_eq!(sub.channel, "$x");
    }

    #[test]
    fn invalid_tenant_name_is_refused() {
        let token = mint(
            SECRET,
            &ConnectClaims {
                sub: "u".into(),
                tenant: Some("a.b".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            verifier().verify_connect(&token, now_unix()),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn hmac_token_is_refused_when_only_a_public_key_is_configured() {
        let v = TokenVerifier::new(None, None);
        let token = mint(
            SECRET,
            &ConnectClaims {
                sub: "u".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            v.verify_connect(&token, now_unix()),
            Err(TokenError::Invalid(_))
        ));
    }
}
