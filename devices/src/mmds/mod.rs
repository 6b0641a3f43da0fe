//! The microVM metadata service (MMDS), as Firecracker defines it: a JSON document the host
//! puts and patches through the API, which the guest reads over HTTP at a link-local address
//! (169.254.169.254 by default) on the network interfaces it is enabled for.
//!
//! - [`Mmds`] (this file): the data store, its size limit, the configuration (version, address,
//!   IMDS compatibility) and the V2 session tokens. Shared (`Arc<Mutex<_>>`) between the API
//!   and every net device that answers for it.
//! - [`http`]: one HTTP request of the guest → the response (V1/V2 rules, JSON or IMDS text).
//! - [`stack`]: the network side, a [`LocalResponder`](crate::virtio::net::LocalResponder)
//!   a net device hands the guest's frames for the MMDS address to: ARP and TCP from smoltcp,
//!   HTTP from [`http`]. Nothing here knows which API configured it.

pub mod http;
pub mod stack;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The address when the config names none.
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The data store's size limit when none is set (bytes of its JSON): Firecracker's default.
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;
/// Longest token lifetime a V2 client may ask for, in seconds.
pub const MAX_TOKEN_TTL_S: u64 = 21_600;
/// Most live tokens kept; past that the ones closest to expiry are dropped.
const MAX_TOKENS: usize = 1024;

/// The MMDS version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// Plain GETs.
    #[default]
    V1,
    /// GETs need a session token from `PUT /latest/api/token`.
    V2,
}

/// How the MMDS answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmdsConfig {
    /// V1 or V2.
    pub version: Version,
    /// The address the guest reaches it at.
    pub ipv4: Ipv4Addr,
    /// Always answer IMDS text (never JSON), whatever the `Accept` header.
    pub imds_compat: bool,
}

impl Default for MmdsConfig {
    fn default() -> Self {
        MmdsConfig {
            version: Version::V1,
            ipv4: DEFAULT_IPV4,
            imds_compat: false,
        }
    }
}

/// Why a change to the data store was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The result would be larger than the limit.
    #[error("the MMDS data store would be {size} bytes, more than its limit of {limit}")]
    TooLarge {
        /// Its size as JSON.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// The data store, its configuration and the live V2 tokens.
#[derive(Debug)]
pub struct Mmds {
    data: Option<Value>,
    size_limit: usize,
    config: MmdsConfig,
    tokens: HashMap<String, Instant>,
}

/// The MMDS as the API and the net devices share it.
pub type SharedMmds = Arc<Mutex<Mmds>>;

impl Default for Mmds {
    fn default() -> Self {
        Mmds::new(DEFAULT_SIZE_LIMIT)
    }
}

impl Mmds {
    /// An empty store whose JSON may grow to `size_limit` bytes.
    pub fn new(size_limit: usize) -> Self {
        Mmds {
            data: None,
            size_limit,
            config: MmdsConfig::default(),
            tokens: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MmdsConfig {
        &self.config
    }

    /// Sets the configuration; a change of version drops every token.
    pub fn set_config(&mut self, config: MmdsConfig) {
        if config.version != self.config.version {
            self.tokens.clear();
        }
        self.config = config;
    }

    /// The document (`{}` before the first put).
    pub fn data(&self) -> Value {
        self.data
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    /// Whether anything was ever put.
    pub fn is_initialised(&self) -> bool {
        self.data.is_some()
    }

    fn check_size(&self, value: &Value) -> Result<(), StoreError> {
        let size = value.to_string().len();
        if size > self.size_limit {
            return Err(StoreError::TooLarge {
                size,
                limit: self.size_limit,
            });
        }
        Ok(())
    }

    /// Replaces the document (any JSON value, as Firecracker takes it).
    pub fn put(&mut self, value: Value) -> Result<(), StoreError> {
        self.check_size(&value)?;
        self.data = Some(value);
        Ok(())
    }

    /// Applies a JSON merge patch (RFC 7396) to the document.
    pub fn patch(&mut self, patch: Value) -> Result<(), StoreError> {
        let mut next = self.data();
        merge_patch(&mut next, patch);
        self.check_size(&next)?;
        self.data = Some(next);
        Ok(())
    }

    /// The value at `path` (`/a/b`, a trailing slash allowed), if any.
    pub fn lookup(&self, path: &str) -> Option<Value> {
        let data = self.data.as_ref()?;
        let pointer = path.trim_end_matches('/');
        if pointer.is_empty() {
            return Some(data.clone());
        }
        data.pointer(pointer).cloned()
    }

    /// A new V2 token that lives `ttl_s` seconds (1 ..= [`MAX_TOKEN_TTL_S`]).
    pub fn new_token(&mut self, ttl_s: u64, now: Instant) -> String {
        self.tokens.retain(|_, expiry| *expiry > now);
        if self.tokens.len() >= MAX_TOKENS {
            if let Some(oldest) = self
                .tokens
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(t, _)| t.clone())
            {
                self.tokens.remove(&oldest);
            }
        }
        let mut raw = [0u8; 32];
        fill_random(&mut raw);
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.tokens
            .insert(token.clone(), now + Duration::from_secs(ttl_s));
        token
    }

    /// Whether `token` is live at `now`.
    pub fn token_valid(&self, token: &str, now: Instant) -> bool {
        self.tokens.get(token).is_some_and(|expiry| *expiry > now)
    }
}

/// RFC 7396: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(&key);
            } else {
                merge_patch(map.entry(key).or_insert(Value::Null), value);
            }
        }
    }
}

/// Fills `buf` from the kernel's random source (falls back to the clock's nanoseconds mixed
/// per byte should `getrandom` fail, which it does not on any kernel petrel runs on).
fn fill_random(buf: &mut [u8]) {
    // SAFETY: getrandom writes at most `buf.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if usize::try_from(n).ok() != Some(buf.len()) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_patch_lookup_and_limits() {
        let mut m = Mmds::new(64);
        assert_eq!(m.data(), json!({}));
        assert_eq!(m.lookup("/"), None);
        m.put(json!({"a": {"b": "x", "c": 1}})).unwrap();
        assert_eq!(m.lookup("/a/b"), Some(json!("x")));
        assert_eq!(m.lookup("/a/"), Some(json!({"b": "x", "c": 1})));
        assert_eq!(m.lookup("/a/z"), None);
        m.patch(json!({"a": {"c": null, "d": "y"}, "e": "z"}))
            .unwrap();
        assert_eq!(m.data(), json!({"a": {"b": "x", "d": "y"}, "e": "z"}));
        let big = json!({"k": "v".repeat(100)});
        assert!(matches!(m.put(big), Err(StoreError::TooLarge { .. })));
        // A refused change leaves the store as it was.
        assert_eq!(m.lookup("/e"), Some(json!("z")));
    }

    #[test]
    fn tokens_expire_and_a_version_change_drops_them() {
        let mut m = Mmds::default();
        let now = Instant::now();
        let t = m.new_token(10, now);
        assert_eq!(t.len(), 64);
        assert!(m.token_valid(&t, now));
        assert!(!m.token_valid(&t, now + Duration::from_secs(11)));
        assert!(!m.token_valid("nope", now));
        m.set_config(MmdsConfig {
            version: Version::V2,
            ..MmdsConfig::default()
        });
        assert!(!m.token_valid(&t, now));
    }
}
