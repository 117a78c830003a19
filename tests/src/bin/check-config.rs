//! Loads plugin configurations through the filter's own parser, natively: what Envoy's
//! `on_configure` would accept or reject, without Envoy. Used by `make istio-check` on the
//! `pluginConfig` of every WasmPlugin.
//!
//! Usage: `check-config FILE...` (`-` reads standard input). Exit 1 if any is invalid.

use std::io::Read;
use std::process::ExitCode;

use nebula_authz::plugin_config::Settings;

fn main() -> ExitCode {
    let mut failed = false;
    for arg in std::env::args().skip(1) {
        let bytes = if arg == "-" {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map(|_| buf)
        } else {
            std::fs::read(&arg)
        };
        let result = match bytes {
            Ok(bytes) => Settings::from_json(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot read: {e}")),
        };
        match result {
            Ok(settings) => println!("ok   {arg}: auth cluster {:?}", settings.auth.cluster),
            Err(e) => {
                failed = true;
                println!("FAIL {arg}: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
