fn main() {
    println!("send benchmark: being written");
}
