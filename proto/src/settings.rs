//! Value parsers shared by every binary's config module, so a duration or a mark reads the same
//! way on the controller, the node agent and the waypoint.

use std::time::Duration;

/// "90s", "15m", "24h", "200ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m or 24h"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// A number in decimal or `0x` hex ("0x539", "1337").
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number (decimal or 0x hex)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_numbers() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(parse_u32("0x539"), Ok(0x539));
        assert_eq!(parse_u32("17"), Ok(17));
        assert!(parse_u32("0xZZ").is_err());
    }
}
