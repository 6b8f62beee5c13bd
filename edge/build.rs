//! napi-build sets the linker flags a Node.js addon needs on each platform.
fn main() {
    napi_build::setup();
}
