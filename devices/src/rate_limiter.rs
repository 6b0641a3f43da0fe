//! Token-bucket rate limiters for device I/O (bandwidth in bytes and operations).
//!
//! Semantics follow Firecracker's: a bucket holds up to `size` tokens and refills completely in
//! `refill_time_ms`; a one-time burst is spent before the bucket and never comes back. A device
//! asks [`RateLimiter::consume`] before each request. When a bucket runs dry the limiter becomes
//! *blocked* and arms its timerfd for the moment enough tokens will be there; the device stops
//! serving its queue, has the timerfd registered on the event loop, and resumes when it fires
//! (after calling [`RateLimiter::event_handler`]). A request larger than the whole bucket is let
//! through once ("over-consumption") and the limiter stays blocked until the debt is refilled.
//!
//! Time comes from a [`Clock`], so the token arithmetic can be tested without the wall clock.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// The shortest timer the limiter arms, so a nearly-full bucket does not cause a wake-up storm.
pub const MIN_TIMER: Duration = Duration::from_millis(1);

/// Longest refill time honoured (about 50 days); longer ones are clamped, which keeps the
/// token arithmetic within `u128`.
pub const MAX_REFILL_TIME_MS: u64 = 1 << 32;

const NANOS_PER_MS: u128 = 1_000_000;

/// Configuration of one token bucket. A bucket with `size == 0` or `refill_time_ms == 0`
/// does not limit anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, spent before the bucket.
    pub one_time_burst: u64,
    /// Time for an empty bucket to refill completely, in milliseconds.
    pub refill_time_ms: u64,
}

/// Configuration of a device's rate limiter: either bucket may be absent (unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Bytes.
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (requests).
    pub ops: Option<TokenBucketConfig>,
}

/// What the limiter's tokens count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Bytes transferred.
    Bytes,
    /// Requests.
    Ops,
}

/// A monotonic time source: time elapsed since some fixed origin.
pub trait Clock: Send {
    /// The current time.
    fn now(&self) -> Duration;
}

/// The real clock ([`Instant`], i.e. `CLOCK_MONOTONIC`).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// The outcome of [`TokenBucket::reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketReduction {
    /// The tokens were taken.
    Success,
    /// Not enough tokens; nothing was taken. Enough will be there after `wait`.
    Failure {
        /// Time until the request would succeed.
        wait: Duration,
    },
    /// The request is larger than the bucket could ever hold: it was let through, the bucket is
    /// empty and in debt; it starts refilling after `wait`.
    OverConsumption {
        /// Time until the debt is paid.
        wait: Duration,
    },
}

/// One token bucket's state.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    one_time_burst: u64,
    refill_ns: u128,
    budget: u64,
    /// Time up to which refills have been counted (may be in the future after over-consumption).
    last_update: Duration,
}

impl TokenBucket {
    /// A full bucket, or `None` when `cfg` limits nothing.
    pub fn new(cfg: &TokenBucketConfig, now: Duration) -> Option<Self> {
        if cfg.size == 0 || cfg.refill_time_ms == 0 {
            return None;
        }
        Some(Self {
            size: cfg.size,
            one_time_burst: cfg.one_time_burst,
            refill_ns: u128::from(cfg.refill_time_ms.min(MAX_REFILL_TIME_MS)) * NANOS_PER_MS,
            budget: cfg.size,
            last_update: now,
        })
    }

    /// Tokens in the bucket (not counting the one-time burst), as of the last update.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// One-time burst tokens left.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// The bucket's capacity.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Time to refill `tokens` tokens, rounded up.
    fn time_for(&self, tokens: u64) -> Duration {
        let size = u128::from(self.size);
        // tokens < 2^64 and refill_ns < 2^52: the product fits.
        let ns = (u128::from(tokens) * self.refill_ns).div_ceil(size);
        duration_from_ns(ns)
    }

    /// Adds the tokens refilled since the last update.
    fn replenish(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last_update).as_nanos();
        let size = u128::from(self.size);
        let new_tokens = elapsed
            .checked_mul(size)
            .map_or(u128::MAX, |t| t / self.refill_ns);
        if new_tokens == 0 {
            return;
        }
        let room = u128::from(self.size - self.budget);
        if new_tokens >= room {
            self.budget = self.size;
            self.last_update = now;
        } else {
            // new_tokens < room <= size fits in u64.
            let new_tokens = new_tokens as u64;
            self.budget += new_tokens;
            // Only the time those whole tokens took is used up; the remainder carries over.
            self.last_update = self.last_update.saturating_add(self.time_for(new_tokens));
        }
    }

    /// Takes `tokens` at time `now` (burst first, then the bucket).
    pub fn reduce(&mut self, tokens: u64, now: Duration) -> BucketReduction {
        self.replenish(now);
        let available = u128::from(self.one_time_burst) + u128::from(self.budget);
        let wanted = u128::from(tokens);
        if wanted <= available {
            let from_burst = tokens.min(self.one_time_burst);
            self.one_time_burst -= from_burst;
            self.budget -= tokens - from_burst;
            return BucketReduction::Success;
        }
        // wanted > available, so the deficit is positive and fits in u64.
        let deficit = (wanted - available) as u64;
        if wanted > u128::from(self.size) + u128::from(self.one_time_burst) {
            // Could never fit: let it through and go into debt.
            self.one_time_burst = 0;
            self.budget = 0;
            self.last_update = self.last_update.saturating_add(self.time_for(deficit));
            let wait = self.last_update.saturating_sub(now);
            return BucketReduction::OverConsumption { wait };
        }
        let ready_at = self.last_update.saturating_add(self.time_for(deficit));
        BucketReduction::Failure {
            wait: ready_at.saturating_sub(now),
        }
    }

    /// Gives back `tokens` (for example those of a request that was not served after all),
    /// up to the bucket's size.
    pub fn replenish_by(&mut self, tokens: u64) {
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }
}

fn duration_from_ns(ns: u128) -> Duration {
    let secs = ns / 1_000_000_000;
    let secs = u64::try_from(secs).unwrap_or(u64::MAX);
    // The remainder is below one billion.
    Duration::new(secs, (ns % 1_000_000_000) as u32)
}

/// What a snapshot keeps of one bucket: the tokens left (its refill clock restarts at restore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketState {
    /// Tokens in the bucket (refills up to the save counted).
    pub budget: u64,
    /// One-time burst tokens left.
    pub one_time_burst: u64,
}

/// What a snapshot keeps of a rate limiter: its buckets' budgets (a bucket the config does not
/// limit is `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimiterState {
    /// The bandwidth bucket.
    pub bandwidth: Option<BucketState>,
    /// The operations bucket.
    pub ops: Option<BucketState>,
}

/// A device's rate limiter: two optional buckets, a blocked flag and the timerfd that ends
/// the blocked state.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
    clock: Box<dyn Clock>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter on the real clock.
    pub fn new(cfg: &RateLimiterConfig) -> io::Result<Self> {
        Self::with_clock(cfg, Box::new(MonotonicClock::default()))
    }

    /// A limiter on the given clock (tests use a manual one).
    pub fn with_clock(cfg: &RateLimiterConfig, clock: Box<dyn Clock>) -> io::Result<Self> {
        let now = clock.now();
        Ok(Self {
            bandwidth: cfg.bandwidth.and_then(|c| TokenBucket::new(&c, now)),
            ops: cfg.ops.and_then(|c| TokenBucket::new(&c, now)),
            timer: TimerFd::new()?,
            blocked: false,
            clock,
        })
    }

    /// Whether the limiter limits anything at all.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Whether the device must wait for the timer before serving more requests.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The bucket for `kind`, if limited.
    pub fn bucket(&self, kind: TokenKind) -> Option<&TokenBucket> {
        match kind {
            TokenKind::Bytes => self.bandwidth.as_ref(),
            TokenKind::Ops => self.ops.as_ref(),
        }
    }

    fn bucket_mut(&mut self, kind: TokenKind) -> Option<&mut TokenBucket> {
        match kind {
            TokenKind::Bytes => self.bandwidth.as_mut(),
            TokenKind::Ops => self.ops.as_mut(),
        }
    }

    /// Takes `tokens` of `kind`. Returns false when the request must wait: the limiter is then
    /// blocked and its timer armed. A failed call takes nothing.
    pub fn consume(&mut self, tokens: u64, kind: TokenKind) -> bool {
        if self.blocked {
            return false;
        }
        let now = self.clock.now();
        let Some(bucket) = self.bucket_mut(kind) else {
            return true;
        };
        match bucket.reduce(tokens, now) {
            BucketReduction::Success => true,
            BucketReduction::Failure { wait } => {
                self.block_for(wait);
                false
            }
            BucketReduction::OverConsumption { wait } => {
                self.block_for(wait);
                true
            }
        }
    }

    /// The budgets now (refills up to now counted), for a snapshot.
    pub fn save(&mut self) -> RateLimiterState {
        let now = self.clock.now();
        let save = |b: &mut Option<TokenBucket>| {
            b.as_mut().map(|b| {
                b.replenish(now);
                BucketState {
                    budget: b.budget,
                    one_time_burst: b.one_time_burst,
                }
            })
        };
        RateLimiterState {
            bandwidth: save(&mut self.bandwidth),
            ops: save(&mut self.ops),
        }
    }

    /// Takes back saved budgets (each at most its bucket's size; refills count from now). A
    /// saved bucket the config no longer has is ignored, and one it has that was not saved
    /// starts full.
    pub fn restore(&mut self, state: &RateLimiterState) {
        let now = self.clock.now();
        let restore = |b: &mut Option<TokenBucket>, s: Option<BucketState>| {
            if let (Some(b), Some(s)) = (b.as_mut(), s) {
                b.budget = s.budget.min(b.size);
                b.one_time_burst = s.one_time_burst;
                b.last_update = now;
            }
        };
        restore(&mut self.bandwidth, state.bandwidth);
        restore(&mut self.ops, state.ops);
    }

    /// Gives back `tokens` of `kind` taken by a request that was not served.
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenKind) {
        if let Some(bucket) = self.bucket_mut(kind) {
            bucket.replenish_by(tokens);
        }
    }

    fn block_for(&mut self, wait: Duration) {
        self.blocked = true;
        if let Err(e) = self.timer.reset(wait.max(MIN_TIMER), None) {
            // Without a timer the device would stall forever: stay unblocked instead.
            log::error!("rate limiter: cannot arm timer: {e}");
            self.blocked = false;
        }
    }

    /// Handles the timerfd becoming readable: consumes the expiration and unblocks.
    /// Call only when the event loop reported the timerfd readable (the read blocks otherwise).
    pub fn event_handler(&mut self) -> io::Result<()> {
        self.timer.wait()?;
        self.blocked = false;
        Ok(())
    }
}

/// A change to one bucket of a running limiter (Firecracker's `PATCH` semantics: a bucket
/// left out stays as it is, one of size or refill time 0 stops limiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Leave the bucket as it is.
    Keep,
    /// A new, full bucket; one that limits nothing removes the bucket.
    Set(TokenBucketConfig),
}

impl RateLimiter {
    /// Changes the buckets in place (the timerfd stays: the event loop keeps watching it).
    /// A blocked limiter is unblocked: the new buckets decide (a timer still armed fires
    /// later and finds nothing to do). The device should then look at its queues again.
    pub fn update(&mut self, bandwidth: BucketUpdate, ops: BucketUpdate) {
        self.blocked = false;
        let now = self.clock.now();
        if let BucketUpdate::Set(cfg) = bandwidth {
            self.bandwidth = TokenBucket::new(&cfg, now);
        }
        if let BucketUpdate::Set(cfg) = ops {
            self.ops = TokenBucket::new(&cfg, now);
        }
    }
}

/// Applies an update to a device's optional limiter, making one if it had none. Returns
/// whether a limiter was made (its timerfd must then be registered with the event loop).
pub fn update_slot(
    slot: &mut Option<RateLimiter>,
    bandwidth: BucketUpdate,
    ops: BucketUpdate,
) -> io::Result<bool> {
    if bandwidth == BucketUpdate::Keep && ops == BucketUpdate::Keep {
        return Ok(false);
    }
    let made = match slot {
        Some(rl) => {
            rl.update(bandwidth, ops);
            false
        }
        None => {
            let mut rl = RateLimiter::new(&RateLimiterConfig::default())?;
            rl.update(bandwidth, ops);
            *slot = Some(rl);
            true
        }
    };
    Ok(made)
}

impl AsRawFd for RateLimiter {
    /// The timerfd to register on the event loop.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// Whether an optional limiter is blocked (no limiter never is).
pub(crate) fn is_blocked(limiter: Option<&RateLimiter>) -> bool {
    limiter.is_some_and(|rl| rl.is_blocked())
}

/// Asks an optional limiter for one operation of `bytes` bytes; takes nothing when it says
/// no (no limiter always says yes).
pub(crate) fn admit(limiter: Option<&mut RateLimiter>, bytes: u64) -> bool {
    let Some(rl) = limiter else {
        return true;
    };
    if !rl.consume(1, TokenKind::Ops) {
        return false;
    }
    if bytes > 0 && !rl.consume(bytes, TokenKind::Bytes) {
        rl.manual_replenish(1, TokenKind::Ops);
        return false;
    }
    true
}

/// Gives back what [`admit`] took.
pub(crate) fn refund(limiter: Option<&mut RateLimiter>, bytes: u64) {
    if let Some(rl) = limiter {
        rl.manual_replenish(1, TokenKind::Ops);
        rl.manual_replenish(bytes, TokenKind::Bytes);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A clock the test moves by hand.
    #[derive(Clone, Default)]
    pub(crate) struct ManualClock(pub Arc<AtomicU64>);

    impl ManualClock {
        pub(crate) fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bucket(size: u64, burst: u64, refill_ms: u64) -> TokenBucket {
        let cfg = TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time_ms: refill_ms,
        };
        TokenBucket::new(&cfg, Duration::ZERO).unwrap()
    }

    #[test]
    fn disabled_buckets() {
        let zero_size = TokenBucketConfig {
            size: 0,
            one_time_burst: 0,
            refill_time_ms: 10,
        };
        let zero_time = TokenBucketConfig {
            size: 10,
            one_time_burst: 0,
            refill_time_ms: 0,
        };
        assert!(TokenBucket::new(&zero_size, Duration::ZERO).is_none());
        assert!(TokenBucket::new(&zero_time, Duration::ZERO).is_none());
        let mut rl = RateLimiter::new(&RateLimiterConfig::default()).unwrap();
        assert!(rl.is_unlimited());
        assert!(rl.consume(u64::MAX, TokenKind::Bytes));
        assert!(rl.consume(u64::MAX, TokenKind::Ops));
        assert!(!rl.is_blocked());
    }

    #[test]
    fn reduce_and_refill() {
        // 1000 tokens per 100 ms: 10 tokens per ms.
        let mut b = bucket(1000, 0, 100);
        assert_eq!(b.reduce(600, ms(0)), BucketReduction::Success);
        assert_eq!(b.budget(), 400);
        // 500 > 400: fails, takes nothing; 100 missing tokens take 10 ms.
        assert_eq!(
            b.reduce(500, ms(0)),
            BucketReduction::Failure { wait: ms(10) }
        );
        assert_eq!(b.budget(), 400);
        // 4 ms later: 40 more, still 60 short (6 ms).
        assert_eq!(
            b.reduce(500, ms(4)),
            BucketReduction::Failure { wait: ms(6) }
        );
        assert_eq!(b.budget(), 440);
        assert_eq!(b.reduce(500, ms(10)), BucketReduction::Success);
        assert_eq!(b.budget(), 0);
        // Refill never goes beyond the size.
        assert_eq!(b.reduce(0, ms(10_000)), BucketReduction::Success);
        assert_eq!(b.budget(), 1000);
    }

    #[test]
    fn fractional_refill_carries_over() {
        // 3 tokens per 10 ms: one token every 3.33 ms.
        let mut b = bucket(3, 0, 10);
        assert_eq!(b.reduce(3, ms(0)), BucketReduction::Success);
        // After 2 ms no whole token.
        assert!(matches!(
            b.reduce(1, ms(2)),
            BucketReduction::Failure { .. }
        ));
        // After 4 ms one token, and the 0.67 ms left over counts towards the next.
        assert_eq!(b.reduce(1, ms(4)), BucketReduction::Success);
        assert_eq!(
            b.reduce(1, Duration::from_micros(6_700)),
            BucketReduction::Success
        );
        assert_eq!(b.budget(), 0);
    }

    #[test]
    fn one_time_burst_first() {
        let mut b = bucket(100, 50, 100);
        assert_eq!(b.reduce(120, ms(0)), BucketReduction::Success);
        assert_eq!(b.one_time_burst(), 0);
        assert_eq!(b.budget(), 30);
        // The burst never comes back.
        assert_eq!(b.reduce(0, ms(1000)), BucketReduction::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 100));
    }

    #[test]
    fn over_consumption_goes_into_debt() {
        // 100 tokens per 100 ms.
        let mut b = bucket(100, 0, 100);
        assert_eq!(
            b.reduce(250, ms(0)),
            BucketReduction::OverConsumption { wait: ms(150) }
        );
        assert_eq!(b.budget(), 0);
        // Still in debt at 149 ms.
        assert!(matches!(
            b.reduce(1, ms(149)),
            BucketReduction::Failure { .. }
        ));
        // Debt paid at 150 ms, one token after 151 ms.
        assert_eq!(b.reduce(1, ms(151)), BucketReduction::Success);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let mut b = bucket(u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(b.reduce(u64::MAX, ms(0)), BucketReduction::Success);
        assert_eq!(b.reduce(u64::MAX, ms(0)), BucketReduction::Success);
        assert!(matches!(
            b.reduce(u64::MAX, Duration::MAX),
            BucketReduction::Success
        ));
        let mut b = bucket(1, 0, u64::MAX);
        assert!(matches!(
            b.reduce(u64::MAX, ms(0)),
            BucketReduction::OverConsumption { .. }
        ));
    }

    #[test]
    fn budgets_are_saved_and_restored() {
        let clock = ManualClock::default();
        let cfg = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1000,
                one_time_burst: 300,
                refill_time_ms: 1000,
            }),
            ops: None,
        };
        let mut rl = RateLimiter::with_clock(&cfg, Box::new(clock.clone())).unwrap();
        assert!(rl.consume(1100, TokenKind::Bytes));
        clock.advance(ms(100));
        let saved = rl.save();
        assert_eq!(
            saved,
            RateLimiterState {
                bandwidth: Some(BucketState {
                    budget: 300,
                    one_time_burst: 0
                }),
                ops: None,
            }
        );
        let json = serde_json::to_string(&saved).unwrap();
        // A limiter made from the same config in another process starts full; the restore
        // gives it what was left, and refills count from the restore.
        let other = ManualClock::default();
        other.advance(Duration::from_secs(50));
        let mut back = RateLimiter::with_clock(&cfg, Box::new(other.clone())).unwrap();
        back.restore(&serde_json::from_str(&json).unwrap());
        assert_eq!(back.bucket(TokenKind::Bytes).unwrap().budget(), 300);
        assert_eq!(back.bucket(TokenKind::Bytes).unwrap().one_time_burst(), 0);
        assert!(
            !back.consume(400, TokenKind::Bytes),
            "the saved budget was not carried"
        );
        other.advance(ms(200));
        back.event_handler().unwrap();
        assert!(back.consume(400, TokenKind::Bytes));
        // A saved budget above the bucket's size is capped.
        back.restore(&RateLimiterState {
            bandwidth: Some(BucketState {
                budget: u64::MAX,
                one_time_burst: 0,
            }),
            ops: Some(BucketState {
                budget: 5,
                one_time_burst: 0,
            }),
        });
        assert_eq!(back.bucket(TokenKind::Bytes).unwrap().budget(), 1000);
        assert!(back.bucket(TokenKind::Ops).is_none());
    }

    #[test]
    fn limiter_blocks_and_unblocks() {
        let clock = ManualClock::default();
        let cfg = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1000,
                one_time_burst: 0,
                refill_time_ms: 1,
            }),
            ops: Some(TokenBucketConfig {
                size: 2,
                one_time_burst: 0,
                refill_time_ms: 1,
            }),
        };
        let mut rl = RateLimiter::with_clock(&cfg, Box::new(clock.clone())).unwrap();
        assert!(rl.consume(1, TokenKind::Ops));
        assert!(rl.consume(1, TokenKind::Ops));
        assert!(!rl.consume(1, TokenKind::Ops));
        assert!(rl.is_blocked());
        // Blocked: even an unlimited-looking request waits.
        assert!(!rl.consume(0, TokenKind::Bytes));
        clock.advance(ms(1));
        // The timer (>= 1 ms of real time) fires; the handler's read waits for it.
        rl.event_handler().unwrap();
        assert!(!rl.is_blocked());
        assert!(rl.consume(1, TokenKind::Ops));
        rl.manual_replenish(1, TokenKind::Ops);
        assert_eq!(rl.bucket(TokenKind::Ops).unwrap().budget(), 2);
        // Over-consumption passes once, then blocks.
        assert!(rl.consume(5000, TokenKind::Bytes));
        assert!(rl.is_blocked());
    }

    #[test]
    fn update_keeps_replaces_or_removes_buckets_and_unblocks() {
        let clock = ManualClock::default();
        let two = TokenBucketConfig {
            size: 2,
            one_time_burst: 0,
            refill_time_ms: 1000,
        };
        let cfg = RateLimiterConfig {
            bandwidth: Some(two),
            ops: Some(two),
        };
        let mut rl = RateLimiter::with_clock(&cfg, Box::new(clock.clone())).unwrap();
        assert!(rl.consume(2, TokenKind::Ops));
        assert!(!rl.consume(1, TokenKind::Ops));
        assert!(rl.is_blocked());
        // Only ops changes (a bigger bucket, full); bandwidth stays; the block ends.
        let ten = TokenBucketConfig { size: 10, ..two };
        rl.update(BucketUpdate::Keep, BucketUpdate::Set(ten));
        assert!(!rl.is_blocked());
        assert_eq!(rl.bucket(TokenKind::Ops).map(TokenBucket::size), Some(10));
        assert_eq!(rl.bucket(TokenKind::Bytes).map(TokenBucket::size), Some(2));
        // A bucket that limits nothing removes it.
        rl.update(
            BucketUpdate::Set(TokenBucketConfig::default()),
            BucketUpdate::Keep,
        );
        assert!(rl.bucket(TokenKind::Bytes).is_none());
        // No limiter yet: one is made only when something changes.
        let mut slot = None;
        assert!(!update_slot(&mut slot, BucketUpdate::Keep, BucketUpdate::Keep).unwrap());
        assert!(slot.is_none());
        assert!(update_slot(&mut slot, BucketUpdate::Keep, BucketUpdate::Set(two)).unwrap());
        assert!(slot.is_some_and(|rl| rl.bucket(TokenKind::Ops).is_some()));
    }
}
