//! The `holdfast` command line. (Being written.)

fn main() {
    eprintln!("holdfast: no command is implemented yet");
    std::process::exit(2);
}
