//! The blocking wrapper, for a program without an async runtime.
//!
//! `cargo run -p kv-client --example blocking -- http://127.0.0.1:8080` against `make run`.

use kv_client::{blocking, Client, Read};

fn main() -> Result<(), kv_client::Error> {
    let endpoint = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let client = blocking::Client::new(Client::builder([endpoint]).retries(5))?;
    client.put("greeting", "hello", "text/plain", None)?;
    match client.get("greeting")? {
        Read::Value { value, context, .. } => println!("{} (context {context})", String::from_utf8_lossy(&value)),
        other => println!("{other:?}"),
    }
    Ok(())
}
