//! For tests only (ours and the workshop's): a throw-away
//! `redis-server` on a free loopback port.
