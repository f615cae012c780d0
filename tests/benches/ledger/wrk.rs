//! `POST /v1/usage` and `POST /v1/bookings` driven by an external load generator (`wrk`, 2
//! threads), as a user's own load test would be (issue 31): the server answers a client that is
//! not this process, and the figure does not depend on our own client's cost. Alternates, like
//! the rest of the bench, with `pgbench` single-row INSERTs at the same concurrency.

use std::process::Command;

use super::{pgbench, EVENT_ROW, PGBENCH_MAX_CLIENTS, SLICES};

/// Whether `wrk` is installed (Debian package `wrk`).
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// `wrk` posting usage facts for `keys` in turn (each with a new idempotency key) at `clients`
/// connections for `secs` in all, alternating with `pgbench`: (requests/s, non-2xx answers,
/// raw INSERT tps).
pub fn usage(base: &str, url: &str, keys: &[String], run: &str, clients: usize, secs: u64) -> (f64, u64, f64) {
    let request = format!(
        r#"  local body = '{{"metric":"api_calls","quantity":1,"idempotency_key":"{run}-{clients}-' .. round .. '-' .. tid .. '-' .. n .. '"}}'
  return wrk.format("POST", "/v1/usage", {{["Authorization"] = "Bearer " .. keys[(n % #keys) + 1], ["Content-Type"] = "application/json"}}, body)"#
    );
    drive(base, url, &lua(keys, &[], &request), "/v1/usage", clients, secs)
}

/// `wrk` booking rooms: each request a distinct 10-minute slot (none overlaps another, in this
/// phase or the bench's own booking phases), of the next tenant's rooms in turn (`keys[i]` owns
/// `rooms[i]`); as [`usage`] otherwise.
pub fn bookings(base: &str, url: &str, keys: &[String], rooms: &[Vec<String>], clients: usize, secs: u64) -> (f64, u64, f64) {
    // Slots after the bench's own booking phases' (those start at 2030 + clients × 10^6 slots).
    let first = 200_000_000 + clients as u64 * 1_000_000;
    let request = format!(
        r#"  local k = (n % #keys) + 1
  local mine = rooms[k]
  local room = mine[(math.floor(n / #keys) % #mine) + 1]
  local start = 1893456000 + ({first} + (round * 2 + tid) * 100000 + n) * 600
  local body = '{{"resource_id":"' .. room .. '","starts_at":"' .. os.date("!%Y-%m-%dT%H:%M:%SZ", start) .. '","ends_at":"' .. os.date("!%Y-%m-%dT%H:%M:%SZ", start + 300) .. '","customer":{{"name":"Bench","email":"bench@example.com"}}}}'
  return wrk.format("POST", "/v1/bookings", {{["Authorization"] = "Bearer " .. keys[k], ["Content-Type"] = "application/json"}}, body)"#
    );
    drive(base, url, &lua(keys, rooms, &request), "/v1/bookings", clients, secs)
}

/// The table row of a `wrk` measurement of `what` at `clients`: (requests/s, non-2xx, raw tps).
pub fn row(what: &str, clients: usize, (per_second, failed, tps): (f64, u64, f64)) -> String {
    format!(
        "| {what} by `wrk -t2 -c{clients}`, {clients} clients | {per_second:.0} req/s | | | {tps:.0} tps ({} clients) | **{:.2}** | {failed} |",
        clients.min(PGBENCH_MAX_CLIENTS),
        per_second / tps
    )
}

/// A `wrk` script: the keys (and rooms) as tables, a thread number and round, and `request`
/// (Lua, with `n` counting this thread's requests) as the request function's body.
fn lua(keys: &[String], rooms: &[Vec<String>], request: &str) -> String {
    let quoted = |items: &[String]| items.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ");
    let rooms: Vec<String> = rooms.iter().map(|r| format!("{{{}}}", quoted(r))).collect();
    format!(
        r#"local keys = {{{keys}}}
local rooms = {{{rooms}}}
local next_id = 0
round = 0
function init(args)
  round = tonumber(args[1] or "0")
end
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
local n = 0
request = function()
  n = n + 1
{request}
end
"#,
        keys = quoted(keys),
        rooms = rooms.join(", "),
    )
}

/// Runs `script` against `path` in [`SLICES`] slices, each followed by `pgbench` for as long.
fn drive(base: &str, url: &str, script: &str, path: &str, clients: usize, secs: u64) -> (f64, u64, f64) {
    let file = std::env::temp_dir().join(format!("sl-bench-wrk-{}.lua", uuid::Uuid::now_v7()));
    std::fs::write(&file, script).expect("a temporary file");
    let slice = (secs / SLICES).max(1);
    let (mut requests, mut seconds, mut failed, mut tps) = (0.0, 0.0, 0u64, 0.0);
    for round in 0..SLICES {
        let output = Command::new("wrk")
            .args(["-t", "2", "-c", &clients.to_string(), "-d", &format!("{slice}s"), "-s"])
            .arg(&file)
            .arg(format!("{base}{path}"))
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
    let _ = std::fs::remove_file(&file);
    (requests / seconds, failed, tps)
}
