//! The `edgethumb` command line.
fn main() {
    println!("edgethumb {}", edgethumb::VERSION);
}
