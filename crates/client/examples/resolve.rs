//! Two blind writes become siblings; a merge function resolves them.
//!
//! `cargo run -p kv-client --example resolve -- http://127.0.0.1:8080` against `make run`.

use kv_client::{Client, Read, Resolution};

#[tokio::main]
async fn main() -> Result<(), kv_client::Error> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = if endpoints.is_empty() { vec!["http://127.0.0.1:8080".to_owned()] } else { endpoints };
    let token = std::env::var("KV_TOKEN").ok();
    let client = Client::builder(&endpoints).token(token).build()?;
    client.put("basket", "apples", "text/plain", None).await?;
    client.put("basket", "pears", "text/plain", None).await?;
    let merged = client
        .resolve("basket", |siblings| {
            let mut items: Vec<String> = siblings
                .iter()
                .filter(|s| !s.deleted)
                .map(|s| String::from_utf8_lossy(&s.value).into_owned())
                .collect();
            items.sort();
            Resolution::Keep(items.join(", ").into(), "text/plain".into())
        })
        .await?;
    if let Read::Value { value, .. } = merged {
        println!("basket: {}", String::from_utf8_lossy(&value));
    }
    // Or keep whichever sibling was written last.
    client.resolve("basket", kv_client::newest_wins).await?;
    Ok(())
}
