//! PID 1 handed to the image's own init (busybox `init`, configured by an `/etc/inittab` patch),
//! with `exec` still served beside it.
//!
//! `MSB_EXAMPLE_IMAGE=127.0.0.1:5000/msb-test/busybox:latest cargo run --example init`

use msb::{Init, Sandbox};

#[tokio::main]
async fn main() -> miette::Result<()> {
    let image = std::env::var("MSB_EXAMPLE_IMAGE").unwrap_or_else(|_| "busybox".into());
    let sb = Sandbox::builder("services")
        .image(&image)
        .init(Init::Path("/sbin/init".into()))
        .patch(|p| p.text("/etc/inittab", "::sysinit:/bin/echo sysinit ran\n::respawn:/bin/sleep 3600\n", None, true))
        .create()
        .await?;

    print!("PID 1 is {}", sb.exec("cat", ["/proc/1/comm"]).await?.stdout);
    // init starts the inittab's entries on its own time: look for a few seconds.
    let respawned = "for i in $(seq 50); do grep -qx sleep /proc/[0-9]*/comm && echo \"the inittab's sleep runs\" && exit; sleep 0.1; done";
    print!("{}", sb.shell(respawned).await?.stdout);
    sb.stop().await?;
    print!("{}", sb.logs().await?);
    sb.remove().await?;
    Ok(())
}
