//! Fault injection: background latency and random error rates from the
//! command line, plus scripted faults tests queue for the next matching
//! requests (a 429 storm, a 500, a stall, an expired token, a lost reply).
//!
//! Faults only change what a client sees; apart from `LoseReply` (which lets
//! the request take effect and then withholds the answer) a faulted request
//! never touches the world.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;

/// Background faults, applied to every `/crm` request at random.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Added before every request is handled.
    pub latency: Duration,
    /// Share of requests answered 500 INTERNAL_ERROR.
    pub error_rate: f64,
    /// Share of requests answered 429 TOO_MANY_REQUESTS.
    pub rate_limit_rate: f64,
    /// Share of requests that stall for `stall_for`, then get a 500.
    pub stall_rate: f64,
    /// How long a stall lasts (a shutdown ends it early).
    pub stall_for: Duration,
}

/// What a scripted fault does to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this HTTP status and Zoho's body for it (429, 500, 503...).
    Status(u16),
    /// Answer 401 INVALID_TOKEN as if the access token had expired.
    InvalidToken,
    /// Hold the request without answering for the configured stall time.
    Stall,
    /// Handle the request, then hold the answer for the stall time: the
    /// write happened but the client never learns it.
    LoseReply,
    /// Handle the request after this extra delay.
    Delay(Duration),
    /// Answer with this status and raw body, as a misbehaving proxy might.
    Raw { status: u16, body: String },
}

/// A fault for the next `times` requests matching the filters.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub fault: Fault,
    pub times: u32,
    /// Only requests whose path contains this text.
    pub path_contains: Option<String>,
    /// Only requests with this method (upper case).
    pub method: Option<String>,
}

impl FaultRule {
    pub fn new(fault: Fault, times: u32) -> Self {
        Self {
            fault,
            times,
            path_contains: None,
            method: None,
        }
    }

    pub fn on_path(mut self, fragment: impl Into<String>) -> Self {
        self.path_contains = Some(fragment.into());
        self
    }

    pub fn on_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into().to_ascii_uppercase());
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.path_contains
            .as_deref()
            .is_none_or(|p| path.contains(p))
            && self.method.as_deref().is_none_or(|m| m == method)
    }
}

#[derive(Debug, Default)]
pub struct FaultState {
    pub config: FaultConfig,
    rules: VecDeque<FaultRule>,
}

impl FaultState {
    pub fn new(config: FaultConfig) -> Self {
        Self {
            config,
            rules: VecDeque::new(),
        }
    }

    pub fn push(&mut self, rule: FaultRule) {
        if rule.times > 0 {
            self.rules.push_back(rule);
        }
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The fault for this request, if any: the first matching scripted rule
    /// (which is used up), else a roll of the background rates.
    pub fn take(&mut self, method: &str, path: &str) -> Option<Fault> {
        if let Some(pos) = self.rules.iter().position(|r| r.matches(method, path)) {
            let rule = &mut self.rules[pos];
            rule.times -= 1;
            let fault = rule.fault.clone();
            if rule.times == 0 {
                self.rules.remove(pos);
            }
            return Some(fault);
        }
        let c = &self.config;
        if c.error_rate <= 0.0 && c.rate_limit_rate <= 0.0 && c.stall_rate <= 0.0 {
            return None;
        }
        let roll: f64 = rand::rng().random();
        if roll < c.stall_rate {
            Some(Fault::Stall)
        } else if roll < c.stall_rate + c.error_rate {
            Some(Fault::Status(500))
        } else if roll < c.stall_rate + c.error_rate + c.rate_limit_rate {
            Some(Fault::Status(429))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scripted_fault_is_used_up_after_its_count() {
        let mut s = FaultState::default();
        s.push(FaultRule::new(Fault::Status(429), 2));
        assert_eq!(s.take("GET", "/crm/v8/Leads"), Some(Fault::Status(429)));
        assert_eq!(s.take("GET", "/crm/v8/Leads"), Some(Fault::Status(429)));
        assert_eq!(s.take("GET", "/crm/v8/Leads"), None);
    }

    #[test]
    fn a_scripted_fault_only_hits_matching_requests() {
        let mut s = FaultState::default();
        s.push(
            FaultRule::new(Fault::Stall, 1)
                .on_path("/upsert")
                .on_method("post"),
        );
        assert_eq!(s.take("GET", "/crm/v8/Leads/upsert"), None);
        assert_eq!(s.take("POST", "/crm/v8/Leads"), None);
        assert_eq!(s.take("POST", "/crm/v8/Leads/upsert"), Some(Fault::Stall));
    }

    #[test]
    fn an_error_rate_of_one_fails_every_request() {
        let mut s = FaultState::new(FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        });
        assert_eq!(s.take("GET", "/x"), Some(Fault::Status(500)));
    }
}
