fn main() {
    println!("cargo:rerun-if-changed=proto/whisper.proto");
    let fds = protox::compile(["proto/whisper.proto"], ["proto"]).expect("compile whisper.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate Rust for whisper.proto");
}
