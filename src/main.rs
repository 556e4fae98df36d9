//! The `msb` command: parse arguments, call the library, render the error, exit.

use std::process::ExitCode;

fn main() -> ExitCode {
    // A krun sandbox's VMM is msb re-executed (libkrun takes over the process that boots a VM).
    if let Some(code) = msb::runtime::krun::vmm_from_env() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    msb::cli::main()
}
