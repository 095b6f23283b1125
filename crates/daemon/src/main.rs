//! `hv-vssd`: the hv-vss daemon (being written).

#[allow(dead_code)]
mod logbuf;

fn main() {
    eprintln!("hv-vssd: not implemented yet");
    std::process::exit(1);
}
