//! The simulation of a busy relay (see `shardspawn_workshop::simulate`);
//! `shardspawn simulate` runs this binary from beside itself.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(shardspawn_workshop::simulate::main(&args))
}
