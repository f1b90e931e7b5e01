fn main() {
    std::process::exit(shardspawn::cli::main());
}
