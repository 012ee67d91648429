//! Build script: compiles the gRPC API and the C++ shim for AOTInductor packages, and makes sure
//! the binary can use CUDA.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_proto()?;
    link_libtorch();
    compile_aoti_shim();
    Ok(())
}

/// Compiles `proto/` with `protox` (pure Rust), so no system `protoc` is needed: this server's
/// API and the Open Inference Protocol's (`inference`). The descriptor set is also written to
/// OUT_DIR for server reflection.
fn compile_proto() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/siglip/v1/siglip.proto",
        "proto/inference/grpc_service.proto",
    ];
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("siglip_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

/// rustc links with `--as-needed`, which drops `libtorch_cuda.so` because no symbol of it is
/// referenced directly; the binary could then never run on a GPU ("Could not run ... with
/// arguments from the 'CUDA' backend"). Linking `-ltorch` under `--no-as-needed` keeps it
/// (libtorch.so depends on libtorch_cuda.so in CUDA builds). The rpath is a RUNPATH, so
/// `LD_LIBRARY_PATH` can point a copied binary at another torch 2.11 install.
fn link_libtorch() {
    if let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        println!("cargo:rustc-link-search=native={lib_dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
}

/// `src/model/aoti.cpp` against the headers of the libtorch that torch-sys links (its `lib/`
/// sits next to `include/` in both a libtorch download and a PyTorch install).
fn compile_aoti_shim() {
    let lib_dir = PathBuf::from(
        env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports its libtorch lib directory"),
    );
    let include = lib_dir.join("../include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("src/model/aoti.cpp")
        .compile("siglip_aoti");
    println!("cargo:rerun-if-changed=src/model/aoti.cpp");
}
