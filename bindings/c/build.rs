//! Writes `odi.h` from the crate's `extern "C"` items (cbindgen). The header is checked in;
//! `bindings/c/run-tests` fails when a build changes it (the API drifted from the header).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("bindings/c/cbindgen.toml");
    cbindgen::Builder::new().with_crate(&dir).with_config(config).generate().expect("cannot generate odi.h").write_to_file(format!("{dir}/odi.h"));
}
