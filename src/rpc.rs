//! The RPC method table behind the protocol's `rpc` command.
//!
//! Methods are registered at start (the composition root decides which
//! services exist); the gateway looks a method up by name and answers 104
//! when it is unknown. Handlers receive the caller's verified identity and
//! the request data as JSON, and return JSON or a typed error.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::protocol::ErrorCode;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct RpcContext {
    pub client: Arc<str>,
    pub user: Arc<str>,
    pub tenant: Arc<str>,
    pub roles: Arc<[String]>,
    pub node: Arc<str>,
}

impl RpcContext {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

/// An error reply to an RPC: a protocol code (100-199) or an application
/// code (400-1999).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: u32,
    pub message: String,
    pub temporary: bool,
}

impl RpcError {
    pub fn protocol(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.code(),
            message: message.into(),
            temporary: code.is_temporary(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::protocol(ErrorCode::BadRequest, message)
    }

    pub fn permission_denied() -> Self {
        Self::protocol(ErrorCode::PermissionDenied, "permission denied")
    }

    pub fn internal() -> Self {
        Self::protocol(ErrorCode::Internal, "internal server error")
    }

    /// An application error with a code in 400..2000.
    pub fn app(code: u32, message: impl Into<String>, temporary: bool) -> Self {
        Self {
            code,
            message: message.into(),
            temporary,
        }
    }
}

pub type RpcResult = Result<Value, RpcError>;
type BoxFuture = Pin<Box<dyn Future<Output = RpcResult> + Send>>;
type Handler = Arc<dyn Fn(RpcContext, Value) -> BoxFuture + Send + Sync>;

/// Name → handler.
#[derive(Clone, Default)]
pub struct RpcRegistry {
    methods: HashMap<String, Handler>,
}

impl RpcRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `name`; a later registration of the same name replaces it.
    pub fn register<F, Fut>(&mut self, name: &str, handler: F)
    where
        F: Fn(RpcContext, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RpcResult> + Send + 'static,
    {
        self.methods.insert(
            name.to_owned(),
            Arc::new(move |ctx, data| Box::pin(handler(ctx, data))),
        );
    }

    pub fn contains(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    /// Calls `name`; an unknown method is 104.
    pub async fn call(&self, name: &str, ctx: RpcContext, data: Value) -> RpcResult {
        match self.methods.get(name) {
            Some(handler) => handler(ctx, data).await,
            None => Err(RpcError::protocol(
                ErrorCode::MethodNotFound,
                "method not found",
            )),
        }
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.methods.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Methods every node offers.
pub fn register_builtin(registry: &mut RpcRegistry) {
    registry.register("session.info", |ctx: RpcContext, _data| async move {
        Ok(serde_json::json!({
            "client": &*ctx.client,
            "user": &*ctx.user,
            "tenant": &*ctx.tenant,
            "roles": &*ctx.roles,
            "node": &*ctx.node,
            "server_time": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        }))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RpcContext {
        RpcContext {
            client: "c".into(),
            user: "u".into(),
            tenant: "t".into(),
            roles: Arc::from(vec!["admin".to_owned()]),
            node: "n".into(),
        }
    }

    #[tokio::test]
    async fn unknown_method_is_104() {
        let r = RpcRegistry::new().call("nope", ctx(), Value::Null).await;
        assert_eq!(r.unwrap_err().code, 104);
    }

    #[tokio::test]
    async fn session_info_echoes_the_callers_identity() {
        let mut r = RpcRegistry::new();
        register_builtin(&mut r);
        let v = r.call("session.info", ctx(), Value::Null).await.unwrap();
        assert_eq!(v["user"], "u");
        assert_eq!(v["client"], "c");
        assert_eq!(v["tenant"], "t");
        assert_eq!(v["roles"][0], "admin");
    }
}
