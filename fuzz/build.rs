//! Links the fuzz targets against Debian's libFuzzer runtime (package
//! libclang-rt-14-dev or newer), which provides `main` and the
//! sanitizer-coverage callbacks. `LIBFUZZER_LIB` overrides the search.
use std::path::PathBuf;

fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LIBFUZZER_LIB") {
        return Some(PathBuf::from(p));
    }
    // /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a, newest LLVM first.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let name = format!("libclang_rt.fuzzer-{arch}.a");
    let mut found = vec![];
    for llvm in std::fs::read_dir("/usr/lib").ok()?.flatten() {
        if !llvm.file_name().to_string_lossy().starts_with("llvm-") {
            continue;
        }
        let Ok(clangs) = std::fs::read_dir(llvm.path().join("lib/clang")) else { continue };
        for clang in clangs.flatten() {
            let p = clang.path().join("lib/linux").join(&name);
            if p.is_file() {
                found.push(p);
            }
        }
    }
    found.sort_by_key(|p| {
        let s = p.to_string_lossy().to_string();
        let v: u32 = s.trim_start_matches("/usr/lib/llvm-").split('/').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        v
    });
    found.pop()
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBFUZZER_LIB");
    let lib = find().expect(
        "libFuzzer runtime not found: apt-get install libclang-rt-14-dev, or set LIBFUZZER_LIB to libclang_rt.fuzzer-<arch>.a",
    );
    println!("cargo:rustc-link-arg-bins={}", lib.display());
    println!("cargo:rustc-link-arg-bins=-lstdc++");
}
