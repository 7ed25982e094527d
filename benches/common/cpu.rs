//! CPU time of the processes a benchmark run involves (this process, the broker, Redis and
//! PostgreSQL's backends) and of the whole machine, from `/proc` (Linux; elsewhere every
//! reading is zero). Tells a run limited by the machine's cores from one limited by waiting.

use std::path::Path;

/// Clock ticks per second of `/proc`'s CPU counters (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds used so far, by process group.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    pub bench: f64,
    pub broker: f64,
    pub redis: f64,
    pub postgres: f64,
    /// Busy time of every core of the machine (every process, ours or not).
    pub machine: f64,
}

impl CpuSample {
    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            bench: self.bench - earlier.bench,
            broker: self.broker - earlier.broker,
            redis: self.redis - earlier.redis,
            postgres: self.postgres - earlier.postgres,
            machine: self.machine - earlier.machine,
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &CpuSample) {
        self.bench += other.bench;
        self.broker += other.broker;
        self.redis += other.redis;
        self.postgres += other.postgres;
        self.machine += other.machine;
    }

    /// "bench B s, broker K s, redis R s, postgres P s (ours T s of the machine's M s busy)".
    pub fn describe(&self) -> String {
        let ours = self.bench + self.broker + self.redis + self.postgres;
        format!(
            "this process {:.2} s, broker {:.2} s, redis {:.2} s, postgres {:.2} s: {ours:.2} CPU-s of the machine's {:.2} busy CPU-s",
            self.bench, self.broker, self.redis, self.postgres, self.machine
        )
    }
}

/// Reads the counters now. `services` is the `.services` directory of `scripts/services-up`.
pub fn sample(services: &Path) -> CpuSample {
    let pid = |file: &str| -> Option<u32> {
        let text = std::fs::read_to_string(services.join(file)).ok()?;
        text.lines().next()?.trim().parse().ok()
    };
    let postmaster = pid("pg/postmaster.pid");
    CpuSample {
        bench: process_seconds(std::process::id()),
        broker: pid("kafka/broker.pid").map_or(0.0, process_seconds),
        redis: pid("redis/redis.pid").map_or(0.0, process_seconds),
        postgres: postmaster.map_or(0.0, |postmaster| {
            process_seconds(postmaster) + children_seconds(postmaster)
        }),
        machine: machine_seconds(),
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = text.rsplit_once(')')?.1;
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// User plus system time of one process (fields 14 and 15 of stat; 12 and 13 after the name).
fn process_seconds(pid: u32) -> f64 {
    stat_fields(pid).map_or(0.0, |fields| {
        let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
        (ticks(11).unwrap_or(0) + ticks(12).unwrap_or(0)) as f64 / TICKS_PER_SECOND
    })
}

/// The CPU time of every live child of `parent` (PostgreSQL's backends).
fn children_seconds(parent: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid)
                .and_then(|fields| fields.get(1)?.parse::<u32>().ok())
                .is_some_and(|ppid| ppid == parent)
        })
        .map(process_seconds)
        .sum()
}

/// Busy time of all cores: everything in /proc/stat's `cpu` line but idle and iowait.
fn machine_seconds() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().next() else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != 3 && *index != 4)
        .map(|(_, ticks)| ticks)
        .sum();
    busy as f64 / TICKS_PER_SECOND
}
