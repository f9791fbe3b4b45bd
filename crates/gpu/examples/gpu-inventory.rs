//! Prints the host GPU inventory: `gpu-inventory` for text, `gpu-inventory --json` for JSON.
//! Exit status 0 with an inventory (even an empty one), 1 with the error chain on stderr.

use std::process::ExitCode;

fn main() -> ExitCode {
    let json = std::env::args().skip(1).any(|a| a == "--json");
    let inv = match pv_gpu::inventory() {
        Ok(inv) => inv,
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!("\n  caused by: {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&inv) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: could not write JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", pv_gpu::render_text(&inv));
    }
    ExitCode::SUCCESS
}
