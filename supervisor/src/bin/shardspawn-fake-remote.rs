//! The stand-in qmail-remote used by `shardspawn simulate` and the
//! end-to-end tests; its behaviour is scripted per recipient (see
//! `shardspawn_harness::remote`).

fn main() {
    shardspawn_harness::remote::main()
}
