//! `[processes.NAME] memory`, `cpu`, `pids`: how much of the machine one instance may take.
//!
//! These keys exist so that one instance gone wrong (a memory leak, a fork bomb, a busy loop)
//! cannot take Lifeboat or the site's other instances down with it. The supervisor enforces
//! them with cgroups; this module only reads and checks what the manifest says.
//!
//! Defaults: `memory` and `cpu` are unlimited, because no number fits every app and a limit
//! that is too low kills a healthy app (an OOM kill loop is an outage the owner caused by not
//! writing a key). `pids` defaults to [`DEFAULT_PIDS`]: no web app needs that many processes
//! and threads in one instance, and without any cap a fork bomb fills the kernel's process
//! table, after which neither Lifeboat nor anything else on the machine can start a process or
//! a thread (systemd caps every service by default for the same reason, `DefaultTasksMax`).

use serde::Deserialize;
use toml::Spanned;

use super::Validator;

/// Processes and threads one instance may have at once when the manifest does not say:
/// generous (a Java app with a large thread pool stays far below), and small next to the
/// kernel's usual `pid_max` of 32768, so a few instances bombing at once still leave room.
pub const DEFAULT_PIDS: u32 = 4096;

/// The most `pids` may say: the kernel's own ceiling on process ids (`PID_MAX_LIMIT`), which
/// amounts to no limit.
pub const MAX_PIDS: i64 = 4_194_304;

/// The smallest `memory` limit accepted: below it not even a shell starts, so a smaller value
/// is a typo (`512KiB` for `512MiB`) that would only make the instance crash in a loop.
pub const MIN_MEMORY: u64 = 4 << 20;

/// `cpu` in thousandths of a core: the kernel's CPU bandwidth control cannot grant less than
/// 1% of a core per period, and no machine Lifeboat runs on has more than 1024 cores.
const MIN_CPU_MILLIS: u32 = 10;
const MAX_CPU_MILLIS: u32 = 1024 * 1000;

/// What one instance of a process may use. Enforced per instance (each replica gets the whole
/// amount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Most memory (RAM and swap together) in bytes; past it the kernel's OOM killer kills a
    /// process of the instance. `None`: no limit.
    pub memory: Option<u64>,
    /// CPU time as thousandths of a core (`cpu = 1.5` is 1500): past it the instance is slowed
    /// down, never killed. `None`: no limit (it still shares the CPU fairly with the others).
    pub cpu_millis: Option<u32>,
    /// Most processes and threads at once; forks past it fail.
    pub pids: u32,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            memory: None,
            cpu_millis: None,
            pids: DEFAULT_PIDS,
        }
    }
}

/// A number as TOML writes it: `cpu = 2` is an integer, `cpu = 1.5` a float; both are read.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawNumber(f64);

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Number;
        impl serde::de::Visitor<'_> for Number {
            type Value = RawNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                // Read by the manifest's error text as "expected ..., found ...".
                f.write_str("a number without quotes, e.g. cpu = 1.5")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawNumber, E> {
                Ok(RawNumber(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawNumber, E> {
                Ok(RawNumber(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawNumber, E> {
                Ok(RawNumber(v))
            }
        }
        d.deserialize_any(Number)
    }
}

/// The limit keys of one `[processes.NAME]` table, as written.
#[derive(Default)]
pub(super) struct RawLimits {
    pub memory: Option<Spanned<String>>,
    pub cpu: Option<Spanned<RawNumber>>,
    pub pids: Option<Spanned<i64>>,
}

impl Validator<'_> {
    pub(super) fn limits(&mut self, process_key: &str, raw: RawLimits) -> ResourceLimits {
        let defaults = ResourceLimits::default();
        let memory = raw.memory.and_then(|written| {
            let key = format!("{process_key}.memory");
            match parse_size(written.get_ref()) {
                Ok(bytes) if bytes >= MIN_MEMORY => Some(bytes),
                Ok(_) => {
                    self.problem(
                        Some(written.span()),
                        &key,
                        format!(
                            "{:?} is less than 4MiB, too little for any process to start",
                            written.get_ref()
                        ),
                        "write the most memory one instance may use, e.g. memory = \"512MiB\" \
                         (or remove `memory` for no limit)"
                            .into(),
                    );
                    None
                }
                Err(why) => {
                    self.problem(
                        Some(written.span()),
                        &key,
                        format!("{:?} is not an amount of memory: {why}", written.get_ref()),
                        "write a number with a unit, e.g. memory = \"512MiB\", \"1.5GiB\" or \
                         \"800MB\" (KiB, MiB, GiB, TiB are powers of 1024; kB, MB, GB, TB of 1000)"
                            .into(),
                    );
                    None
                }
            }
        });
        let cpu_millis = raw.cpu.and_then(|written| {
            let cores = written.get_ref().0;
            let millis = (cores * 1000.0).round();
            if cores.is_finite()
                && (f64::from(MIN_CPU_MILLIS)..=f64::from(MAX_CPU_MILLIS)).contains(&millis)
            {
                Some(millis as u32)
            } else {
                self.problem(
                    Some(written.span()),
                    &format!("{process_key}.cpu"),
                    format!("cpu must be between 0.01 and 1024 cores, found {cores}"),
                    "write how many cores one instance may keep busy, e.g. cpu = 1.5 or cpu = 0.5 \
                     (or remove `cpu` for no limit)"
                        .into(),
                );
                None
            }
        });
        let pids = match raw.pids {
            None => defaults.pids,
            Some(p) if (1..=MAX_PIDS).contains(p.get_ref()) => *p.get_ref() as u32,
            Some(p) => {
                self.problem(
                    Some(p.span()),
                    &format!("{process_key}.pids"),
                    format!(
                        "pids must be between 1 and {MAX_PIDS}, found {}",
                        p.get_ref()
                    ),
                    format!(
                        "write how many processes and threads one instance may run at once, \
                         e.g. pids = 200 (the default is {DEFAULT_PIDS})"
                    ),
                );
                defaults.pids
            }
        };
        ResourceLimits {
            memory,
            cpu_millis,
            pids,
        }
    }
}

/// Bytes in `"512MiB"`, `"1.5GiB"`, `"800MB"`, `"4096B"`. The unit is required (case does not
/// matter): a bare `"512M"` is refused because tools disagree on whether it means 10^6 or
/// 2^20, and a limit off by 5% is one the owner did not choose.
pub fn parse_size(written: &str) -> Result<u64, &'static str> {
    let written = written.trim();
    let split = written
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or("it has no unit")?;
    let (number, unit) = written.split_at(split);
    if number.is_empty() {
        return Err("it does not start with a number");
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "m" | "g" | "t" => return Err("the unit is ambiguous (KiB or kB?)"),
        _ => return Err("the unit is not one of B, KiB, MiB, GiB, TiB, kB, MB, GB, TB"),
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier).ok_or("it is too large");
    }
    let value: f64 = number.parse().map_err(|_| "the number is not a number")?;
    let bytes = (value * multiplier as f64).round();
    if bytes >= u64::MAX as f64 {
        return Err("it is too large");
    }
    Ok(bytes as u64)
}

/// `bytes` as the manifest would write it, in the largest power-of-1024 unit that keeps it
/// readable: `536870912` is `512MiB`, `1610612736` is `1.5GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            let text = format!("{value:.1}");
            let text = text.strip_suffix(".0").unwrap_or(&text);
            return format!("{text}{unit}");
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_in_the_unit_written() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("800MB"), Ok(800_000_000));
        assert_eq!(parse_size("4096 B"), Ok(4096));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        assert_eq!(parse_size("1kB"), Ok(1000));
    }

    #[test]
    fn sizes_without_a_clear_unit_or_number_are_refused() {
        assert!(parse_size("512").is_err());
        assert!(parse_size("512M").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.2.3MiB").is_err());
        assert!(parse_size("-1MiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert!(parse_size("5 apples").is_err());
    }

    #[test]
    fn sizes_are_shown_as_the_manifest_writes_them() {
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(3 << 29), "1.5GiB");
        assert_eq!(format_size(100), "100B");
        assert_eq!(
            parse_size(&format_size(64 << 20)).map(format_size),
            Ok("64MiB".into())
        );
    }
}
