//! A sandbox whose root is patched before boot, built in Rust.
//!
//! Run from a folder with a `cert.pem`, with an image the setup provides:
//! `MSB_EXAMPLE_IMAGE=127.0.0.1:5000/msb-test/busybox:latest cargo run --example patch`.

use msb::Sandbox;

#[tokio::main]
async fn main() -> miette::Result<()> {
    let image = std::env::var("MSB_EXAMPLE_IMAGE").unwrap_or_else(|_| "alpine".into());
    let sb = Sandbox::builder("worker")
        .image(&image)
        .patch(|p| p
            .text("/etc/greeting.txt", "Hello from a patched rootfs!\n", None, false)
            .text("/etc/motd", "Custom message of the day.\n", None, true) // replace existing
            .mkdir("/app", Some(0o755))
            .text("/app/config.json", r#"{"debug": true}"#, Some(0o644), false)
            .copy_file("./cert.pem", "/etc/ssl/cert.pem", None, false)
            .append("/etc/hosts", "127.0.0.1 myapp.local\n")
        )
        .create()
        .await?;

    print!("{}", sb.exec("cat", ["/etc/greeting.txt", "/etc/motd", "/app/config.json"]).await?.stdout);
    println!();
    print!("{}", sb.shell("ls -l /app | tail -n +2 | cut -c1-10; head -c 11 /etc/ssl/cert.pem; echo; grep myapp /etc/hosts").await?.stdout);
    sb.stop().await?;
    sb.remove().await?;
    Ok(())
}
