//! The stand-in qmail-remote used by `shardspawn simulate` and the
//! end-to-end tests; its behaviour is scripted per recipient (see
//! `shardspawn_workshop::remote`).

fn main() {
    shardspawn_workshop::remote::main()
}
