//! The PNG chart of the main ratios, drawn by gnuplot (Debian
//! `gnuplot-nox`, cairo PNG terminal, DejaVu Sans): one group of bars per
//! subject, one bar per workload, each the subject's speed relative to its
//! own backend row in the same run (`backend` for the microsocks group,
//! `backend-dante` for the dante group; throughput and rate as measured /
//! backend, latency as backend / measured), so higher is better everywhere
//! and 1.0 is the backend alone. The groups are separated by an empty slot.
//! The axis is logarithmic: `direct` is ten times the microsocks backend's
//! throughput, and 0.8 must stay readable beside it.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context, Result, ensure};

use crate::bench::{
    report::SubjectReport,
    stats::{BULK_DOWN_1, BULK_DOWN_8, BULK_UP_1, CONN_RATE, RTT_P50},
};

/// `(metric, legend, invert)`: inverted metrics are lower-is-better.
const BARS: &[(&str, &str, bool)] = &[
    (BULK_UP_1, "bulk 1 up", false),
    (BULK_DOWN_1, "bulk 1 down", false),
    (BULK_DOWN_8, "bulk 8 down", false),
    (RTT_P50, "64 B RTT p50 (inverse)", true),
    (CONN_RATE, "connections/s", false),
];

/// The gnuplot data: one line per subject, one column per bar.
pub fn data(subjects: &[SubjectReport]) -> String {
    let mut out = String::from("subject");
    for (_, legend, _) in BARS {
        let _ = write!(out, "\t\"{legend}\"");
    }
    out.push('\n');
    let mut group = None;
    for subject in subjects {
        if group.is_some_and(|group| group != subject.group) {
            out.push_str("\"\"");
            out.push_str(&"\tNaN".repeat(BARS.len()));
            out.push('\n');
        }
        group = Some(subject.group);
        let _ = write!(out, "\"{}\"", subject.name);
        for (key, _, invert) in BARS {
            let ratio = subject
                .figures
                .get(key)
                .and_then(|figure| figure.vs_backend.as_ref())
                .map(|ratio| ratio.median)
                .filter(|ratio| ratio.is_finite() && *ratio > 0.0);
            match ratio {
                Some(ratio) if *invert => {
                    let _ = write!(out, "\t{:.4}", 1.0 / ratio);
                }
                Some(ratio) => {
                    let _ = write!(out, "\t{ratio:.4}");
                }
                None => out.push_str("\tNaN"),
            }
        }
        out.push('\n');
    }
    out
}

/// Writes `png` (and `png`.dat / .gp beside it, removed afterwards).
/// `network` (the topology's name) goes into the title.
pub fn draw(subjects: &[SubjectReport], network: &str, runs: usize, png: &Path) -> Result<()> {
    let dat = png.with_extension("dat");
    let script = png.with_extension("gp");
    std::fs::write(&dat, data(subjects))?;
    let columns = BARS.len() + 1;
    std::fs::write(
        &script,
        format!(
            "set terminal pngcairo size 1800,750 font 'DejaVu Sans,11'\n\
             set output '{png}'\n\
             set title '{network} topology: speed relative to the backend of each group: one microsocks (first group), one dante-server (backend-dante group); median of {runs} runs; higher is better; 1 = that backend alone'\n\
             set style data histogram\n\
             set style histogram clustered gap 1\n\
             set style fill solid 0.85 border -1\n\
             set boxwidth 0.9\n\
             set key outside right top\n\
             set grid ytics\n\
             set logscale y 2\n\
             set yrange [0.125:32]\n\
             set ytics ('1/8' 0.125, '1/4' 0.25, '1/2' 0.5, '1' 1, '2' 2, '4' 4, '8' 8, '16' 16, '32' 32)\n\
             set xtics rotate by -25\n\
             set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2 lc rgb 'black'\n\
             plot for [i=2:{columns}] '{dat}' using i:xtic(1) title columnheader(i)\n",
            png = png.display(),
            dat = dat.display(),
        ),
    )?;
    let out = Command::new("gnuplot")
        .arg(&script)
        .output()
        .context("run gnuplot (apt-get install gnuplot-nox)")?;
    let _ = std::fs::remove_file(&dat);
    let _ = std::fs::remove_file(&script);
    ensure!(
        out.status.success(),
        "gnuplot: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::stats::{Sample, figures};

    #[test]
    fn latency_bars_are_inverted_so_that_higher_is_better() {
        let backend: Sample = [(RTT_P50, 50.0), (CONN_RATE, 1000.0)].into_iter().collect();
        let slower: Sample = [(RTT_P50, 100.0), (CONN_RATE, 2000.0)]
            .into_iter()
            .collect();
        let subjects = [SubjectReport {
            name: "x",
            path: "",
            group: "microsocks",
            baseline: "backend",
            figures: figures(
                &[slower],
                std::slice::from_ref(&backend),
                std::slice::from_ref(&backend),
            ),
        }];
        let line = data(&subjects).lines().nth(1).expect("a row").to_owned();
        let cells: Vec<&str> = line.split('\t').collect();
        assert_eq!(cells[0], "\"x\"");
        assert_eq!(cells[4], "0.5000", "RTT twice the backend's: half as fast");
        assert_eq!(cells[5], "2.0000", "twice the connection rate");
    }

    #[test]
    fn an_empty_slot_separates_the_backend_families() {
        let row = |name, group| SubjectReport {
            name,
            path: "",
            group,
            baseline: "backend",
            figures: BTreeMap::new(),
        };
        let subjects = [
            row("backend", "microsocks"),
            row("haproxy", "microsocks"),
            row("backend-dante", "dante"),
        ];
        let data = data(&subjects);
        let names: Vec<&str> = data
            .lines()
            .skip(1)
            .filter_map(|line| line.split('\t').next())
            .collect();
        assert_eq!(
            names,
            ["\"backend\"", "\"haproxy\"", "\"\"", "\"backend-dante\""]
        );
    }
}
