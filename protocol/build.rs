//! Compiles `proto/fjord/v1/*.proto` with protox (a pure-Rust protobuf compiler), so no
//! system `protoc` is needed, and generates the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/fjord/v1/fjord.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".fjord.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
