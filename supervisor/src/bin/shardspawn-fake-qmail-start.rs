//! The stand-in qmail-start used by the tests that run shardspawn under
//! daemontools and runit (see `shardspawn_harness::qmail_start`).

fn main() {
    shardspawn_harness::qmail_start::main()
}
