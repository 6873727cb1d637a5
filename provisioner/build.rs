//! Generates the CRI client plinth-init stops pods with (node/cri.rs) from
//! proto/cri.proto, with protoc (Debian's protobuf-compiler, which `make deps` installs).

fn main() {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    if let Err(e) = tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri.proto"], &["proto"])
    {
        // A build script's only way to fail is to say why and exit non-zero.
        eprintln!("compiling proto/cri.proto: {e}");
        std::process::exit(1);
    }
}
