//! The performance benchmark: shardspawn against a bare posix_spawn and
//! waitpid loop on the same stand-in qmail-remote (see
//! `shardspawn_workshop::bench`). Run it in release:
//! `cargo build --release && ./target/release/shardspawn-bench`.

fn main() {
    std::process::exit(shardspawn_workshop::bench::main())
}
