//! The emulator's shared state: the CRM world behind one mutex, OAuth grants,
//! page cursors, watch channels, jobs, and the counters and request log that
//! tests inspect.
//!
//! The world lock is a `std::sync::Mutex` and is never held across an
//! `.await`: handlers take it, do their work, and release it before replying.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::faults::FaultState;
use super::model::{Module, User};
use super::seed::Seed;
use super::{SimConfig, watch::Delivery};

/// A refresh token and the access tokens minted from it.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    pub client_id: String,
    pub user_id: String,
    /// Live access tokens, oldest first (Zoho keeps at most 15).
    pub access: VecDeque<String>,
    /// When each recent refresh happened, for the 10-per-10-minutes throttle.
    pub recent: VecDeque<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct AccessGrant {
    pub user_id: String,
    pub expires: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    pub user_id: String,
}

/// Where a `page_token` resumes: after the record with this sort key.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub user_id: String,
    pub signature: String,
    pub after: (i64, u64),
    pub served: usize,
    pub page: u64,
    pub expires: OffsetDateTime,
}

/// A Watch API channel, as enabled (one per `channel_id`).
#[derive(Debug, Clone)]
pub struct Channel {
    pub channel_id: String,
    /// `(module api_name, operation)` with operation create|edit|delete|all.
    pub events: Vec<(String, String)>,
    pub notify_url: String,
    pub token: Option<String>,
    pub expiry: OffsetDateTime,
    pub return_affected_field_values: bool,
    pub notify_on_related_action: bool,
}

#[derive(Debug, Clone)]
pub struct MassJob {
    pub module: String,
    pub status: &'static str,
    pub total: u64,
    pub updated: u64,
    pub failed: u64,
}

#[derive(Debug, Clone)]
pub struct BulkJob {
    pub id: String,
    pub operation: String,
    pub state: String,
    /// The request as created, echoed in status replies.
    pub request: Value,
    pub created_by: String,
    pub created: OffsetDateTime,
    /// Zip bytes of the result, once finished.
    pub result: Option<Vec<u8>>,
    /// Counts and details for the status reply.
    pub summary: Map<String, Value>,
}

/// The CRM as the emulator holds it.
#[derive(Debug)]
pub struct World {
    pub org: Map<String, Value>,
    pub users: Vec<User>,
    pub modules: Vec<Module>,
    pub clients: Vec<OAuthClient>,
    pub refresh_tokens: HashMap<String, RefreshGrant>,
    pub access_tokens: HashMap<String, AccessGrant>,
    pub grant_codes: HashMap<String, (String, String)>,
    pub cursors: HashMap<String, Cursor>,
    pub channels: Vec<Channel>,
    pub mass_jobs: HashMap<String, MassJob>,
    pub bulk_reads: HashMap<String, BulkJob>,
    pub bulk_writes: HashMap<String, BulkJob>,
    pub uploads: HashMap<String, Vec<u8>>,
    next_id: u64,
}

impl World {
    pub fn from_seed(seed: &Seed, now: OffsetDateTime) -> Self {
        let first_user = seed.users.first().map(|u| u.id.clone()).unwrap_or_default();
        let mut world = Self {
            org: seed.org.clone(),
            users: seed.users.clone(),
            modules: Vec::new(),
            clients: Vec::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            grant_codes: HashMap::new(),
            cursors: HashMap::new(),
            channels: Vec::new(),
            mass_jobs: HashMap::new(),
            bulk_reads: HashMap::new(),
            bulk_writes: HashMap::new(),
            uploads: HashMap::new(),
            next_id: 4_876_876_000_001_000_000,
        };
        for client in &seed.oauth_clients {
            let user_id = client.user_id.clone().unwrap_or_else(|| first_user.clone());
            world.clients.push(OAuthClient {
                client_id: client.client_id.clone(),
                client_secret: client.client_secret.clone(),
                user_id: user_id.clone(),
            });
            for token in &client.refresh_tokens {
                world.refresh_tokens.insert(
                    token.clone(),
                    RefreshGrant {
                        client_id: client.client_id.clone(),
                        user_id: user_id.clone(),
                        access: VecDeque::new(),
                        recent: VecDeque::new(),
                    },
                );
            }
            for code in &client.grant_codes {
                world
                    .grant_codes
                    .insert(code.clone(), (client.client_id.clone(), user_id.clone()));
            }
        }
        for module_seed in &seed.modules {
            let id = module_seed
                .id
                .clone()
                .unwrap_or_else(|| world.next_id().to_string());
            let mut module = Module::new(module_seed, id, now);
            for field in module.fields.iter_mut().filter(|f| f.id.is_none()) {
                world.next_id += 1;
                field.id = Some(world.next_id.to_string());
            }
            world.modules.push(module);
        }
        // Records go in after every module exists, so lookups between seeded
        // records resolve; seeded values are trusted as written.
        for module_seed in &seed.modules {
            for record in &module_seed.records {
                let id = record
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| world.next_id());
                let mut values = record.clone();
                values.remove("id");
                if let Some(module) = world.module_mut(&module_seed.api_name) {
                    module.insert(
                        id,
                        values,
                        super::model::Stamp {
                            user: &first_user,
                            at: now,
                            zone: time::UtcOffset::UTC,
                        },
                    );
                }
            }
        }
        // Fresh ids must never land on a seeded one.
        let highest = world
            .modules
            .iter()
            .filter_map(|m| m.records.keys().next_back().copied())
            .max()
            .unwrap_or(0);
        world.next_id = world.next_id.max(highest);
        world
    }

    /// A fresh 19-digit id, increasing like Zoho's.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Module lookup is case-insensitive, as Zoho's is.
    pub fn module_index(&self, name: &str) -> Option<usize> {
        self.modules
            .iter()
            .position(|m| m.api_name.eq_ignore_ascii_case(name))
    }

    pub fn module(&self, name: &str) -> Option<&Module> {
        self.module_index(name).map(|i| &self.modules[i])
    }

    pub fn module_mut(&mut self, name: &str) -> Option<&mut Module> {
        self.module_index(name).map(move |i| &mut self.modules[i])
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    pub fn record_exists(&self, module: &str, id: &str) -> bool {
        let Ok(id) = id.parse::<u64>() else {
            return false;
        };
        self.module(module)
            .is_some_and(|m| m.records.contains_key(&id))
    }

    pub fn display_name(&self, module: &str, id: &str) -> Option<String> {
        let m = self.module(module)?;
        let rec = m.records.get(&id.parse::<u64>().ok()?)?;
        m.display_name(rec)
    }
}

/// One request as the emulator saw it, for tests to count. It is logged on
/// arrival, so requests whose answer never arrives (stalls, lost replies)
/// count too; `status` is 0 until the answer is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The body of a small request (writes), else empty.
    pub body: String,
    /// Request headers, `Authorization` left out.
    pub headers: Vec<(String, String)>,
}

/// Everything the handlers share.
pub struct SimState {
    pub config: SimConfig,
    pub base_url: String,
    world: Mutex<World>,
    pub faults: Mutex<FaultState>,
    pub clock_skew: Mutex<Duration>,
    pub log: Mutex<VecDeque<(u64, LoggedRequest)>>,
    next_log_seq: AtomicU64,
    pub credits: Mutex<VecDeque<(OffsetDateTime, u64)>>,
    pub in_flight: AtomicUsize,
    pub complex_in_flight: AtomicUsize,
    pub token_requests: AtomicU64,
    pub callbacks_sent: AtomicU64,
    pub callbacks_failed: AtomicU64,
    pub deliveries: mpsc::Sender<Delivery>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// How many requests the log keeps; older ones are dropped first.
const LOG_CAPACITY: usize = 50_000;

impl SimState {
    pub fn new(
        config: SimConfig,
        base_url: String,
        deliveries: mpsc::Sender<Delivery>,
        shutdown: CancellationToken,
    ) -> Self {
        // Zoho keeps whole seconds (ZOHO-API.md §10); so do seeded records.
        let now = OffsetDateTime::now_utc();
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let world = World::from_seed(&config.seed, now);
        let faults = FaultState::new(config.faults.clone());
        Self {
            config,
            base_url,
            world: Mutex::new(world),
            faults: Mutex::new(faults),
            clock_skew: Mutex::new(Duration::ZERO),
            log: Mutex::new(VecDeque::new()),
            next_log_seq: AtomicU64::new(0),
            credits: Mutex::new(VecDeque::new()),
            in_flight: AtomicUsize::new(0),
            complex_in_flight: AtomicUsize::new(0),
            token_requests: AtomicU64::new(0),
            callbacks_sent: AtomicU64::new(0),
            callbacks_failed: AtomicU64::new(0),
            deliveries,
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    /// The world; a poisoned lock is recovered because every mutation leaves
    /// the world consistent before it can panic.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The emulator's clock: real time plus the skew tests add, whole seconds.
    pub fn now(&self) -> OffsetDateTime {
        let skew = *self.clock_skew.lock().unwrap_or_else(|e| e.into_inner());
        let at = OffsetDateTime::now_utc() + skew;
        at.replace_nanosecond(0).unwrap_or(at)
    }

    /// Logs an arriving request; returns its sequence number for [`Self::answered`].
    pub fn record_request(&self, entry: LoggedRequest) -> u64 {
        let seq = self
            .next_log_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back((seq, entry));
        seq
    }

    /// Records the status a logged request was answered with.
    pub fn answered(&self, seq: u64, status: u16) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, entry)) = log.iter_mut().rev().find(|(s, _)| *s == seq) {
            entry.status = status;
        }
    }
}
