//! `cargo sim`: the seeded simulation suite. (Being written.)

fn main() {
    eprintln!("holdfast-sim: not implemented yet");
    std::process::exit(2);
}
