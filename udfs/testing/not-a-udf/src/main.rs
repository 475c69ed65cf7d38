//! Test guest: a WASI command (world `wasi:cli/command`), which the server
//! must refuse as a UDF.

fn main() {
    println!("not a UDF");
}
