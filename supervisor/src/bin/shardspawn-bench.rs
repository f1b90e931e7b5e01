//! The performance benchmark: shardspawn against a bare posix_spawn and
//! waitpid loop on the same stand-in qmail-remote (see
//! `shardspawn_harness::bench`). Run it in release:
//! `cargo build --release && ./target/release/shardspawn-bench`.

fn main() {
    std::process::exit(shardspawn_harness::bench::main())
}
