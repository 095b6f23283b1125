//! `hv-vssd`: the hv-vss daemon (to be written).
fn main() {
    eprintln!("hv-vssd: not implemented yet");
    std::process::exit(1);
}
