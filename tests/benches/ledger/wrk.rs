//! `POST /v1/usage` driven by an external load generator (`wrk`, 2 threads), as a user's own
//! load test would be (issue 31): the server answers a client that is not this process, and
//! the figure does not depend on our own client's cost. Alternates, like the rest of the bench,
//! with `pgbench` single-row INSERTs at the same concurrency.

use std::process::Command;

use super::{pgbench, EVENT_ROW, SLICES};

/// Whether `wrk` is installed (Debian package `wrk`).
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// `wrk` posting usage facts for `keys` in turn (each with a new idempotency key) at `clients`
/// connections for `secs` in all, alternating with `pgbench`: (requests/s, non-2xx answers,
/// raw INSERT tps).
pub fn usage(base: &str, url: &str, keys: &[String], run: &str, clients: usize, secs: u64) -> (f64, u64, f64) {
    let script = std::env::temp_dir().join(format!("sl-bench-wrk-{}.lua", uuid::Uuid::now_v7()));
    let keys_lua: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    std::fs::write(
        &script,
        format!(
            r#"local keys = {{{keys}}}
local next_id = 0
round = "0"
function init(args)
  round = args[1] or "0"
end
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
local n = 0
request = function()
  n = n + 1
  local body = '{{"metric":"api_calls","quantity":1,"idempotency_key":"{run}-{clients}-' .. round .. '-' .. tid .. '-' .. n .. '"}}'
  return wrk.format("POST", "/v1/usage", {{["Authorization"] = "Bearer " .. keys[(n % #keys) + 1], ["Content-Type"] = "application/json"}}, body)
end
"#,
            keys = keys_lua.join(", "),
        ),
    )
    .expect("a temporary file");
    let slice = (secs / SLICES).max(1);
    let (mut requests, mut seconds, mut failed, mut tps) = (0.0, 0.0, 0u64, 0.0);
    for round in 0..SLICES {
        let output = Command::new("wrk")
            .args(["-t", "2", "-c", &clients.to_string(), "-d", &format!("{slice}s"), "-s"])
            .arg(&script)
            .arg(format!("{base}/v1/usage"))
            .args(["--", &round.to_string()])
            .output()
            .expect("wrk runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let per_second: f64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}{}", String::from_utf8_lossy(&output.stderr)));
        failed +=
            text.lines().find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:").and_then(|v| v.trim().parse().ok())).unwrap_or(0);
        requests += per_second * slice as f64;
        seconds += slice as f64;
        tps += pgbench(url, EVENT_ROW, clients, slice) / SLICES as f64;
    }
    let _ = std::fs::remove_file(&script);
    (requests / seconds, failed, tps)
}
