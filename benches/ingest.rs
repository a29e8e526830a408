fn main() {
    println!("ingest benchmark: not written yet");
}
