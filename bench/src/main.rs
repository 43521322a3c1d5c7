//! `tern-bench`: the load generator (built out in its own issue).

fn main() {
    eprintln!("tern-bench: the load generator is not built yet (see the tern-bench issue)");
    std::process::exit(2);
}
