//! msb's guest agent: PID 1 (or the setup before the image's init) and the exec server of every
//! sandbox. See `msb::agent`. Built static so that it runs in any root:
//! `cargo rustc --release --bin msb-agent -- -C target-feature=+crt-static`.

fn main() {
    msb::agent::init::main()
}
