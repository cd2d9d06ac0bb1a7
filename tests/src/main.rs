fn main() {
    eprintln!("weft-lab: the lab is not built yet");
    std::process::exit(2);
}
