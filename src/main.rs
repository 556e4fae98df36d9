//! The `msb` command: parse arguments, call the library, render the error, exit.

use std::process::ExitCode;

fn main() -> ExitCode {
    msb::cli::main()
}
