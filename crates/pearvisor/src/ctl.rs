//! `pearvisor ctl`: one request to a running VM's API socket, the answer on
//! stdout (JSON pretty-printed, metrics as text, nothing for actions; a
//! screenshot's PNG into the `-o` file, nothing on stdout) and the server's
//! message on stderr when it fails. `resize WIDTHxHEIGHT` sends
//! `vm.resize`'s JSON body.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pv_api::client::{Client, Response};
use pv_api::{Endpoint, PNG_SIGNATURE};
use serde_json::json;

use crate::cli::{CtlArgs, CtlRequest};

impl CtlRequest {
    /// The endpoint this request calls.
    pub fn endpoint(self) -> Endpoint {
        match self {
            CtlRequest::Ping => Endpoint::Ping,
            CtlRequest::Info => Endpoint::Info,
            CtlRequest::Pause => Endpoint::Pause,
            CtlRequest::Resume => Endpoint::Resume,
            CtlRequest::Reboot => Endpoint::Reboot,
            CtlRequest::PowerButton => Endpoint::PowerButton,
            CtlRequest::Shutdown => Endpoint::Shutdown,
            CtlRequest::Counters => Endpoint::Counters,
            CtlRequest::Metrics => Endpoint::Metrics,
            CtlRequest::Gpus => Endpoint::Gpus,
            CtlRequest::Screenshot => Endpoint::Screenshot,
            CtlRequest::Resize => Endpoint::Resize,
        }
    }
}

/// What `ctl` reports as `pearvisor ctl: <message>` when it is not the
/// server's answer.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    /// Arguments that do not go together: exit status 2, like clap's
    /// usage errors.
    #[error("{0}")]
    Usage(&'static str),
    #[error("refusing to write a PNG to a terminal: redirect stdout or give -o FILE")]
    StdoutIsATerminal,
    #[error("refusing to write a PNG to {}: it is a terminal", .0.display())]
    FileIsATerminal(PathBuf),
    #[error("the server's answer is not a PNG image (Content-Type: {0})")]
    NotAPng(String),
    #[error("cannot write the PNG to {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Sends the request; 0 on a 2xx answer, 1 otherwise (with a message), 2
/// for options that do not go with the request.
pub fn run(args: &CtlArgs) -> ExitCode {
    if let Err(e) = check_options(args) {
        return fail(&e);
    }
    let endpoint = args.request.endpoint();
    let (path, body) = match (args.request, args.display, args.size) {
        (CtlRequest::Screenshot, Some(n), _) => (format!("{}?display={n}", endpoint.path()), None),
        (CtlRequest::Resize, display, Some(size)) => {
            let mut body = json!({"width": size.width, "height": size.height});
            if let Some(n) = display {
                body["display"] = json!(n);
            }
            (endpoint.path(), Some(body.to_string()))
        }
        _ => (endpoint.path(), None),
    };
    let client = Client::new(&args.socket);
    let response = match client.request(endpoint.method().as_str(), &path, body.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if !response.is_success() {
        eprintln!(
            "pearvisor ctl: {} (HTTP {})",
            response.error_message(),
            response.status
        );
        return ExitCode::FAILURE;
    }
    if let (CtlRequest::Screenshot, Some(output)) = (args.request, &args.output) {
        return match save_png(&response, output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let text = match response.json() {
        Some(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| response.text()),
        None => response.text(),
    };
    if !text.is_empty() {
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) is not an error worth reporting.
        let _ = out.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}

/// `-o` is required with `screenshot` and refused with anything else, a
/// size is required with `resize` and refused with anything else,
/// `--display` goes with both; `-o -` is refused up front when stdout is a
/// terminal.
fn check_options(args: &CtlArgs) -> Result<(), CtlError> {
    match (args.request, args.size) {
        (CtlRequest::Resize, None) => {
            return Err(CtlError::Usage(
                "resize needs the size as WIDTHxHEIGHT, like 1920x1080",
            ))
        }
        (CtlRequest::Resize, Some(_)) | (_, None) => {}
        (_, Some(_)) => return Err(CtlError::Usage("WIDTHxHEIGHT goes only with resize")),
    }
    match (args.request, &args.output) {
        (CtlRequest::Screenshot, None) => Err(CtlError::Usage(
            "screenshot needs -o FILE, the file to write the PNG to (- for stdout)",
        )),
        (CtlRequest::Screenshot, Some(o)) if is_stdout(o) && std::io::stdout().is_terminal() => {
            Err(CtlError::StdoutIsATerminal)
        }
        (CtlRequest::Screenshot, Some(_)) => Ok(()),
        (_, Some(_)) => Err(CtlError::Usage("-o/--output goes only with screenshot")),
        (CtlRequest::Resize, None) => Ok(()),
        (_, None) if args.display.is_some() => Err(CtlError::Usage(
            "--display goes only with screenshot and resize",
        )),
        (_, None) => Ok(()),
    }
}

fn is_stdout(output: &Path) -> bool {
    output.as_os_str() == "-"
}

/// Writes the answer's PNG, byte for byte, to `output` (`-`: stdout).
fn save_png(response: &Response, output: &Path) -> Result<(), CtlError> {
    let content_type = response.header("content-type").unwrap_or("none");
    if content_type != "image/png" || !response.body.starts_with(&PNG_SIGNATURE) {
        return Err(CtlError::NotAPng(content_type.to_string()));
    }
    let write_error = |source| CtlError::Write {
        path: output.to_path_buf(),
        source,
    };
    if is_stdout(output) {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(&response.body)
            .and_then(|()| out.flush())
            .map_err(|source| CtlError::Write {
                path: "stdout".into(),
                source,
            });
    }
    let mut file = File::create(output).map_err(write_error)?;
    // Opening a terminal writes nothing to it; the PNG would.
    if file.is_terminal() {
        return Err(CtlError::FileIsATerminal(output.to_path_buf()));
    }
    file.write_all(&response.body).map_err(write_error)
}

/// Prints `pearvisor ctl: <error>: <cause>: …`; 2 for a usage error, else 1.
fn fail(e: &(dyn std::error::Error + 'static)) -> ExitCode {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("pearvisor ctl: {message}");
    match e.downcast_ref::<CtlError>() {
        Some(CtlError::Usage(_)) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}
