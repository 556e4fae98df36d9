//! Scripts mounted at `/.msb/scripts`, on `PATH`, called by name.
//!
//! `MSB_EXAMPLE_IMAGE=127.0.0.1:5000/msb-test/busybox:latest cargo run --example scripts`

use msb::Sandbox;

#[tokio::main]
async fn main() -> miette::Result<()> {
    let image = std::env::var("MSB_EXAMPLE_IMAGE").unwrap_or_else(|_| "alpine".into());
    let sb = Sandbox::builder("scripted")
        .image(&image)
        .env("GREETING", "hello")
        .script("greet", "echo \"$GREETING, $1, from $(command -v greet)\"")
        .create()
        .await?;

    let out = sb.exec("greet", ["world"]).await?;
    print!("{}", out.stdout);
    println!("exit status {}", out.status);
    sb.stop().await?;
    sb.remove().await?;
    Ok(())
}
