//! The `fjord` command-line tool. Its commands arrive with the single-node broker (issue 3).

fn main() {
    eprintln!("fjord: no commands yet; the broker's gRPC API is not built (see README.md)");
    std::process::exit(2);
}
