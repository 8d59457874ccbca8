//! `kvctl status` (every member's load and transfers in one table, like `nodetool status`) and
//! `kvctl leave --wait` (the hand-off's progress until the node has left).

use std::time::{Duration, Instant};

use kv_client::Error;

use crate::admin::Admin;
use serde_json::Value;

use crate::text;

/// Prints `/admin/status` as a table; returns how many members did not answer.
pub async fn print(admin: &Admin) -> anyhow::Result<usize> {
    let status = admin.get("/admin/status").await?;
    println!(
        "{:<10} {:<9} {:<8} {:<8} {:>7} {:>12} {:>10} {:>10} {:>8}  moving",
        "id", "status", "zone", "release", "owns", "keys", "disk", "free", "hints"
    );
    let mut silent = 0;
    for m in status["members"].as_array().into_iter().flatten() {
        let load = &m["load"];
        let (keys, disk, free, hints, moving) = if load.is_object() {
            (
                thousands(load["keys"].as_u64().unwrap_or(0)),
                bytes(load["disk_bytes"].as_u64().unwrap_or(0)),
                bytes(load["disk_free_bytes"].as_u64().unwrap_or(0)),
                thousands(load["hints"].as_u64().unwrap_or(0)),
                moving(load),
            )
        } else {
            silent += 1;
            let why = format!("no answer: {}", text(&m["error"]));
            ("?".into(), "?".into(), "?".into(), "?".into(), why)
        };
        let release = m["release"].as_str().filter(|r| !r.is_empty()).unwrap_or("<0.2.0");
        println!(
            "{:<10} {:<9} {:<8} {:<8} {:>6.1}% {:>12} {:>10} {:>10} {:>8}  {}",
            text(&m["id"]),
            text(&m["status"]),
            text(&m["zone"]),
            release,
            m["replica_share"].as_f64().unwrap_or(0.0) * 100.0,
            keys,
            disk,
            free,
            hints,
            moving
        );
    }
    println!(
        "owns: effective share of the ring (N = {}: the shares sum to {}%); ranges moving: {}",
        status["replicas"],
        status["replicas"].as_u64().unwrap_or(0) * 100,
        status["moving_ranges"]
    );
    Ok(silent)
}

/// What a member is moving: its transfer in progress (ranges done of all, keys), the ring
/// share it is still filling or handing off.
fn moving(load: &Value) -> String {
    let (filling, dropping) =
        (load["filling_share"].as_f64().unwrap_or(0.0), load["dropping_share"].as_f64().unwrap_or(0.0));
    let mut parts = Vec::new();
    if let Some(transfer) = transfer(load) {
        parts.push(transfer);
    }
    if filling > 0.0 {
        parts.push(format!("filling {:.1}% of the ring", filling * 100.0));
    }
    if dropping > 0.0 {
        parts.push(format!("{:.1}% of the ring to hand off ({})", dropping * 100.0, text(&load["dropper"])));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

/// The rebalancer's transfer while it runs: `joining: pulling gained ranges 12/40 ranges, 3,120
/// keys`.
fn transfer(load: &Value) -> Option<String> {
    let (ranges, done) = (load["transfer_ranges"].as_u64()?, load["transfer_done"].as_u64()?);
    (done < ranges).then(|| {
        format!(
            "{} {done}/{ranges} ranges, {} keys",
            text(&load["transfer"]),
            thousands(load["transfer_keys"].as_u64().unwrap_or(0))
        )
    })
}

/// `kvctl leave --wait`: after `POST /admin/leave`, follows the node's own row of
/// `/admin/status` until it says `left` (the node then exits), printing the hand-off's progress.
/// A node that stops answering after its last range was handed off has left; one that stops
/// with ranges still to hand off is an error (it may have crashed: its log says).
pub async fn wait_for_leave(admin: &Admin, id: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let left = |how: &str| println!("{id} has left after {:.1} s: {how}", started.elapsed().as_secs_f64());
    // The most of the ring seen still to hand off: progress is measured against it (the
    // dropper learns its ranges only once the new owners know of the leave).
    let (mut most, mut last_share, mut last_printed) = (0f64, None::<f64>, String::new());
    let mut unreachable_since: Option<Instant> = None;
    // Whether its last hand-off was seen complete (every range handed off): it may set itself
    // `left`, be refused by a peer that heard so and exit between two polls.
    let mut handed_off = false;
    loop {
        match own_row(admin, id).await {
            // Its own view no longer lists it: it is `left` (or was removed meanwhile).
            Ok(None) => {
                left("every range handed off");
                return Ok(());
            }
            Ok(Some(row)) => {
                unreachable_since = None;
                let load = &row["load"];
                let status = text(&row["status"]);
                let rebalancer = text(&load["rebalancer"]);
                if status == "left" || rebalancer == "left" {
                    left("every range handed off");
                    return Ok(());
                }
                handed_off |= text(&load["transfer"]) == kv_proto::HANDING_OFF
                    && load["transfer_ranges"].as_u64().is_some_and(|ranges| ranges > 0)
                    && load["transfer_done"] == load["transfer_ranges"];
                let share = load["dropping_share"].as_f64().unwrap_or(0.0).max(0.0);
                most = most.max(share);
                last_share = Some(share);
                let line = match (transfer(load), most > 0.0) {
                    (Some(transfer), _) => transfer,
                    (None, true) => format!(
                        "{status}: {:.0}% handed off, {:.1}% of the ring to go ({})",
                        (1.0 - share / most) * 100.0,
                        share * 100.0,
                        text(&load["dropper"])
                    ),
                    (None, false) => format!("{status}: {rebalancer}"),
                };
                if line != last_printed {
                    println!("[{:>5.1} s] {line}", started.elapsed().as_secs_f64());
                    last_printed = line;
                }
            }
            Err(Error::Transport { .. }) => {
                // The node exits once it has left; a last answer may be missed.
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(3) {
                    // Its hand-off was seen complete, or it had nothing left to hand off.
                    if handed_off || (last_share.is_some_and(|share| share <= 0.0) && most > 0.0) {
                        left("it handed off every range and exited");
                        return Ok(());
                    }
                    return Err(anyhow::anyhow!(
                        "{id} stopped answering before it had handed off every range: it may have crashed (see its \
                         log); `kvctl members` shows whether it is leaving or down"
                    ));
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The node's own row of its `/admin/status`; `None` once it no longer lists itself (a member
/// that has left is not listed).
async fn own_row(admin: &Admin, id: &str) -> Result<Option<Value>, Error> {
    let status = admin.get("/admin/status").await?;
    Ok(status["members"].as_array().into_iter().flatten().find(|m| m["id"] == id).cloned())
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
