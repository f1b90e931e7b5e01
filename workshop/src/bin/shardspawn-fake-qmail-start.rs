//! The stand-in qmail-start used by the tests that run shardspawn under
//! daemontools and runit (see `shardspawn_workshop::qmail_start`).

fn main() {
    shardspawn_workshop::qmail_start::main()
}
