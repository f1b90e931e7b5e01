//! A shared rate is one GCRA on the server: two holders asking as fast
//! as they can get, together, at most the rate over the time plus one
//! burst; tokens taken and not used go back to the fleet; a holder
//! given none is served before those that ask after it.

mod util;

use std::time::{Duration, Instant};

use shardspawn_common::limits::{Per, Rate};
use shardspawn_fleet::testing::RedisServer;
use util::{Shard, tokens};

#[test]
fn two_holders_get_at_most_the_rate_plus_a_burst() {
    let server = RedisServer::start();
    let rate = Rate { count: 20, per: Per::Second }; // T = 50 ms
    let batch = 3; // tau = 2 T: a burst of 3
    let lease = Duration::from_secs(30);
    let mut shards = [
        Shard::with(server.url(), "a", lease, batch),
        Shard::with(server.url(), "b", lease, batch),
    ];
    let window = Duration::from_secs(2);
    let start = Instant::now();
    let mut granted = 0;
    while start.elapsed() < window {
        for shard in &mut shards {
            granted += shard.claim(tokens("k", rate, batch, 0)).tokens;
        }
    }
    let elapsed = start.elapsed();
    let most = (elapsed.as_secs_f64() / 0.05).floor() as u32 + batch;
    let least = (window.as_secs_f64() / 0.05) as u32 * 9 / 10;
    assert!(granted <= most, "{granted} tokens in {elapsed:?}");
    assert!(granted >= least, "{granted} tokens in {elapsed:?}");
}

#[test]
fn unused_tokens_go_back() {
    let server = RedisServer::start();
    let rate = Rate { count: 1, per: Per::Minute };
    let mut a = Shard::with(server.url(), "a", Duration::from_secs(30), 1);
    let mut b = Shard::with(server.url(), "b", Duration::from_secs(30), 1);
    assert_eq!(a.claim(tokens("k", rate, 1, 0)).tokens, 1);
    assert_eq!(a.claim(tokens("k", rate, 1, 0)).tokens, 0);
    assert_eq!(b.claim(tokens("k", rate, 1, 0)).tokens, 0);
    // a did not use its token: b may.
    assert_eq!(a.claim(tokens("k", rate, 0, 1)).tokens, 0);
    assert_eq!(b.claim(tokens("k", rate, 1, 0)).tokens, 1);
    assert_eq!(a.claim(tokens("k", rate, 1, 0)).tokens, 0);
}

/// A holder given no token waits its turn: the next token due is its,
/// even when another holder asks first (a relay slower to ask again is
/// not always second). Tokens given back make one due without waiting.
#[test]
fn the_holder_waiting_longest_gets_the_next_token() {
    let server = RedisServer::start();
    let rate = Rate { count: 1, per: Per::Minute };
    let mut a = Shard::with(server.url(), "a", Duration::from_secs(30), 1);
    let mut b = Shard::with(server.url(), "b", Duration::from_secs(30), 1);
    assert_eq!(a.claim(tokens("k", rate, 1, 0)).tokens, 1);
    assert_eq!(b.claim(tokens("k", rate, 1, 0)).tokens, 0, "b waits");
    // a gives its token back and asks again at once: due, but b's.
    assert_eq!(a.claim(tokens("k", rate, 1, 1)).tokens, 0, "b's turn");
    assert_eq!(b.claim(tokens("k", rate, 1, 0)).tokens, 1);
    // And the other way round: a has waited since.
    assert_eq!(b.claim(tokens("k", rate, 1, 1)).tokens, 0, "a's turn");
    assert_eq!(a.claim(tokens("k", rate, 1, 0)).tokens, 1);
    // A holder that asks for none waits for none.
    assert_eq!(b.claim(tokens("k", rate, 0, 0)).tokens, 0);
    assert_eq!(a.claim(tokens("k", rate, 1, 1)).tokens, 1);
}

/// `N/d`: 50,000 a day is one every 1.728 s, no burst with a batch of 1.
#[test]
fn a_daily_rate_is_evenly_spaced() {
    let server = RedisServer::start();
    let rate = Rate { count: 50_000, per: Per::Day };
    let mut a = Shard::with(server.url(), "a", Duration::from_secs(30), 1);
    assert_eq!(a.claim(tokens("k", rate, 5, 0)).tokens, 1);
    assert_eq!(a.claim(tokens("k", rate, 5, 0)).tokens, 0);
    let mut con = server.connection();
    let tat: u64 = shardspawn_fleet::testing::redis::cmd("GET")
        .arg("t:rate:k")
        .query(&mut con)
        .unwrap();
    let ttl: i64 = shardspawn_fleet::testing::redis::cmd("PTTL")
        .arg("t:rate:k")
        .query(&mut con)
        .unwrap();
    assert!(tat > 1_700_000_000_000_000, "TAT in microseconds: {tat}");
    assert!((1600..=1728).contains(&ttl), "the TAT expires when past: {ttl}");
}
