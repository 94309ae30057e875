//! The records and lock RPC methods (DESIGN.md §2): parse `data`, call one
//! service function, map the error. An error's message is a JSON object
//! `{code, message, ...details}` (a version conflict carries `current`, the
//! record as it now is), so SDK clients can act on it.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use super::input::{fields, flag, number, object, opt_number, string};
use super::{Caller, RecordService, ServiceError, ServiceResult};
use crate::rpc::{RpcContext, RpcError, RpcRegistry};

impl From<ServiceError> for RpcError {
    fn from(e: ServiceError) -> Self {
        RpcError::app(e.rpc_code(), e.body().to_string(), e.is_temporary())
    }
}

fn caller(ctx: &RpcContext) -> Caller {
    Caller::user(&ctx.tenant, &ctx.user, &ctx.client, ctx.is_admin())
}

/// Registers `name` with a handler that gets the service, the caller and the data object.
fn method<F, Fut>(registry: &mut RpcRegistry, service: &Arc<RecordService>, name: &str, f: F)
where
    F: Fn(Arc<RecordService>, Caller, serde_json::Map<String, Value>) -> Fut
        + Send
        + Sync
        + Copy
        + 'static,
    Fut: Future<Output = ServiceResult> + Send + 'static,
{
    let service = service.clone();
    registry.register(name, move |ctx: RpcContext, data: Value| {
        let service = service.clone();
        async move {
            let data = object(&data)?.clone();
            Ok(f(service, caller(&ctx), data).await?)
        }
    });
}

/// Adds `record.*`, `lock.*`, `draft.*` and `offline.*`.
pub fn register(registry: &mut RpcRegistry, service: &Arc<RecordService>) {
    method(registry, service, "record.get", |s, c, d| async move {
        s.get(&c, string(&d, "entity")?, string(&d, "id")?).await
    });
    method(registry, service, "record.update", |s, c, d| async move {
        s.update(
            &c,
            string(&d, "entity")?,
            string(&d, "id")?,
            number(&d, "base_version")?,
            fields(&d, "fields")?,
            opt_number(&d, "lock_token")?,
        )
        .await
    });
    method(registry, service, "lock.acquire", |s, c, d| async move {
        s.lock_acquire(
            &c,
            string(&d, "entity")?,
            string(&d, "id")?,
            opt_number(&d, "ttl_ms")?,
            flag(&d, "takeover")?,
        )
        .await
    });
    method(registry, service, "lock.renew", |s, c, d| async move {
        s.lock_renew(
            &c,
            string(&d, "entity")?,
            string(&d, "id")?,
            number(&d, "token")?,
            opt_number(&d, "ttl_ms")?,
        )
        .await
    });
    method(registry, service, "lock.release", |s, c, d| async move {
        s.lock_release(
            &c,
            string(&d, "entity")?,
            string(&d, "id")?,
            number(&d, "token")?,
        )
        .await
    });
    method(
        registry,
        service,
        "lock.force_release",
        |s, c, d| async move {
            s.lock_force_release(&c, string(&d, "entity")?, string(&d, "id")?)
                .await
        },
    );
    method(registry, service, "lock.status", |s, c, d| async move {
        s.lock_status(&c, string(&d, "entity")?, string(&d, "id")?)
            .await
    });
    method(registry, service, "draft.save", |s, c, d| async move {
        s.draft_save(
            &c,
            string(&d, "entity")?,
            string(&d, "id")?,
            fields(&d, "fields")?,
        )
        .await
    });
    method(registry, service, "offline.push", |s, c, d| async move {
        s.offline_push(&c, &d).await
    });
    method(registry, service, "offline.pull", |s, c, d| async move {
        s.offline_pull(&c, super::offline::PullRequest::from_data(&d)?)
            .await
    });
    method(registry, service, "draft.get", |s, c, d| async move {
        s.draft_get(&c, string(&d, "entity")?, string(&d, "id")?)
            .await
    });
}
