//! Refuses a build whose JPEG code would silently lack its SIMD (see build/assembler.rs).

include!("build/assembler.rs");

fn main() {
    println!("cargo:rerun-if-changed=build/assembler.rs");
    println!("cargo:rerun-if-env-changed={ALLOW_SLOW_JPEG_ENV}");
    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let version = std::process::Command::new("nasm")
        .arg("-v")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let allow_slow = std::env::var(ALLOW_SLOW_JPEG_ENV).is_ok_and(|v| v == "1");
    match assembler_verdict(&target_arch, version.as_deref(), allow_slow) {
        AssemblerVerdict::Fine => {}
        AssemblerVerdict::WarnSlow(message) => {
            println!("cargo:warning=SLOW BUILD: {message}");
        }
        AssemblerVerdict::Refuse(message) => {
            eprintln!("\nedgethumb: {message}\n");
            std::process::exit(1);
        }
    }
}
