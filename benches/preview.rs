fn main() {
    println!("preview benchmark: being written");
}
