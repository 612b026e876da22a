//! `harness bench --log sled,etcd --coordinators 1,2,3`: which setups to measure, and the
//! scale-out table that sets them side by side (txn/s and p50 at each client count).

use crate::bench::{BenchRow, label};

/// One measured setup: where the coordinators keep their log, and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub etcd: bool,
    pub coordinators: usize,
}

impl Setup {
    pub fn log_name(&self) -> &'static str {
        if self.etcd { "etcd" } else { "sled" }
    }
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "log {}, {} coordinator{}",
            self.log_name(),
            self.coordinators,
            if self.coordinators == 1 { "" } else { "s" }
        )
    }
}

/// Most coordinators a bench starts.
const MAX_COORDINATORS: usize = 9;

/// The setups `--log` and `--coordinators` ask for: sled's single coordinator first (the
/// baseline, measured in the same run whenever etcd is), then each coordinator count over etcd.
pub fn setups(log: &str, coordinators: &str) -> anyhow::Result<Vec<Setup>> {
    let counts: Vec<usize> = coordinators
        .split(',')
        .map(|c| c.trim().parse::<usize>().ok().filter(|n| (1..=MAX_COORDINATORS).contains(n)))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--coordinators: {coordinators:?} is not a comma-separated list of counts 1..={MAX_COORDINATORS}"
            )
        })?;
    let mut sled = false;
    let mut etcd = false;
    for l in log.split(',').map(str::trim) {
        match l {
            "sled" => sled = true,
            "etcd" => etcd = true,
            other => anyhow::bail!("--log: {other:?} is not sled or etcd"),
        }
    }
    if !etcd && counts.iter().any(|n| *n > 1) {
        anyhow::bail!("--coordinators above 1 needs --log etcd: a sled log is one coordinator's");
    }
    let mut out = Vec::new();
    if sled || etcd {
        out.push(Setup {
            etcd: false,
            coordinators: 1,
        });
    }
    if etcd {
        out.extend(counts.iter().map(|&n| Setup {
            etcd: true,
            coordinators: n,
        }));
    }
    Ok(out)
}

/// txn/s and p50 of every setup at each client count, one table per system.
pub fn print_scale_out(rows: &[BenchRow]) {
    let mut systems: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| r.log != "postgres") {
        if !systems.contains(&label(r)) {
            systems.push(label(r));
        }
    }
    let mut setups: Vec<(String, usize)> = rows
        .iter()
        .filter(|r| r.log != "postgres")
        .map(|r| (r.log.clone(), r.coordinators))
        .collect();
    setups.dedup();
    let mut counts: Vec<usize> = rows.iter().map(|r| r.clients).collect();
    counts.sort_unstable();
    counts.dedup();
    for system in systems {
        println!("scale-out, {system}: txn/s (p50 ms) per client count");
        let mut header = format!("  {:<16}", "setup");
        for c in &counts {
            header += &format!(" {:>18}", format!("{c} clients"));
        }
        println!("{header}");
        for (log, n) in &setups {
            let mut line = format!("  {:<16}", format!("{log} x{n}"));
            for c in &counts {
                let cell = rows
                    .iter()
                    .find(|r| {
                        r.system == system
                            && &r.log == log
                            && r.coordinators == *n
                            && r.clients == *c
                    })
                    .map(|r| format!("{:.0} ({:.2})", r.tps, r.p50_ms))
                    .unwrap_or_else(|| "-".into());
                line += &format!(" {cell:>18}");
            }
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_setups_come_with_the_sled_baseline() {
        let s = setups("etcd", "1,2,3").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            Setup {
                etcd: false,
                coordinators: 1
            }
        );
        assert_eq!(
            s[3],
            Setup {
                etcd: true,
                coordinators: 3
            }
        );
        assert_eq!(setups("sled", "1").unwrap().len(), 1);
        assert!(setups("sled", "2").is_err());
        assert!(setups("mongo", "1").is_err());
        assert!(setups("etcd", "0").is_err());
    }
}
