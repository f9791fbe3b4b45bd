//! `pearvisor ctl`: one request to a running VM's API socket, the answer on
//! stdout (JSON pretty-printed, metrics as text, nothing for actions) and
//! the server's message on stderr when it fails.

use std::io::Write;
use std::process::ExitCode;

use pv_api::client::Client;
use pv_api::Endpoint;

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
        }
    }
}

/// Sends the request; 0 on a 2xx answer, 1 otherwise (with a message).
pub fn run(args: &CtlArgs) -> ExitCode {
    let endpoint = args.request.endpoint();
    let client = Client::new(&args.socket);
    let response = match client.request(endpoint.method().as_str(), &endpoint.path(), None) {
        Ok(r) => r,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("pearvisor ctl: {message}");
            return ExitCode::FAILURE;
        }
    };
    if !response.is_success() {
        eprintln!(
            "pearvisor ctl: {} (HTTP {})",
            response.error_message(),
            response.status
        );
        return ExitCode::FAILURE;
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
