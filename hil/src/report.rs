//! The run's reports: JUnit XML (for CI) and Markdown (for people), one entry per scenario with its
//! outcome, timings, what was lost (must be 0) and notes on what the target could not do.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub number: u32,
    pub name: &'static str,
    pub title: &'static str,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Named timings (time to lock, time to the collector, restart time...).
    pub timings: Vec<(String, Duration)>,
    /// Cases, locks or results lost; anything above 0 fails the scenario.
    pub lost: u64,
    /// What was checked and what this target could not do.
    pub notes: Vec<String>,
}

pub struct RunReport {
    pub target: String,
    pub machine: String,
    pub started: String,
    pub scenarios: Vec<ScenarioReport>,
}

impl RunReport {
    pub fn failed(&self) -> usize {
        self.scenarios.iter().filter(|s| matches!(s.outcome, Outcome::Fail(_))).count()
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("hil-junit.xml"), self.junit())?;
        std::fs::write(dir.join("hil-report.md"), self.markdown())
    }

    pub fn junit(&self) -> String {
        let skipped = self.scenarios.iter().filter(|s| matches!(s.outcome, Outcome::Skip(_))).count();
        let total: f64 = self.scenarios.iter().map(|s| s.elapsed.as_secs_f64()).sum();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuite name=\"crlm-hil {}\" tests=\"{}\" failures=\"{}\" skipped=\"{skipped}\" time=\"{total:.1}\" timestamp=\"{}\">",
            xml(&self.target),
            self.scenarios.len(),
            self.failed(),
            xml(&self.started)
        );
        for s in &self.scenarios {
            let _ = write!(
                x,
                "  <testcase classname=\"hil.{}\" name=\"{}. {}\" time=\"{:.1}\">",
                xml(&self.target),
                s.number,
                s.name,
                s.elapsed.as_secs_f64()
            );
            match &s.outcome {
                Outcome::Pass => {}
                Outcome::Fail(why) => {
                    let _ = write!(x, "<failure message=\"{}\"/>", xml(why));
                }
                Outcome::Skip(why) => {
                    let _ = write!(x, "<skipped message=\"{}\"/>", xml(why));
                }
            }
            let mut out = s.notes.clone();
            out.extend(s.timings.iter().map(|(k, v)| format!("{k}: {:.1} s", v.as_secs_f64())));
            out.push(format!("lost: {}", s.lost));
            let _ = writeln!(x, "<system-out>{}</system-out></testcase>", xml(&out.join("\n")));
        }
        x.push_str("</testsuite>\n");
        x
    }

    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# crlm-hil: target `{}`\n", self.target);
        let _ = writeln!(m, "- Started: {}", self.started);
        let _ = writeln!(m, "- Machine: {}", self.machine);
        let pass = self.scenarios.iter().filter(|s| s.outcome == Outcome::Pass).count();
        let _ = writeln!(
            m,
            "- Result: {pass} passed, {} failed, {} skipped; lost in all: {}\n",
            self.failed(),
            self.scenarios.len() - pass - self.failed(),
            self.scenarios.iter().map(|s| s.lost).sum::<u64>()
        );
        m.push_str("| # | Scenario | Result | Time | Lost | Timings |\n|---|---|---|---|---|---|\n");
        for s in &self.scenarios {
            let result = match &s.outcome {
                Outcome::Pass => "pass".to_string(),
                Outcome::Fail(_) => "**FAIL**".to_string(),
                Outcome::Skip(_) => "skipped".to_string(),
            };
            let timings: Vec<String> = s.timings.iter().map(|(k, v)| format!("{k} {:.1} s", v.as_secs_f64())).collect();
            let _ = writeln!(
                m,
                "| {} | {} | {result} | {:.0} s | {} | {} |",
                s.number,
                cell(s.title),
                s.elapsed.as_secs_f64(),
                s.lost,
                cell(&timings.join("; "))
            );
        }
        for s in &self.scenarios {
            let _ = writeln!(m, "\n## {}. {}\n", s.number, s.title);
            match &s.outcome {
                Outcome::Pass => {}
                Outcome::Fail(why) => {
                    let _ = writeln!(m, "Failed: {why}\n");
                }
                Outcome::Skip(why) => {
                    let _ = writeln!(m, "Skipped: {why}\n");
                }
            }
            for n in &s.notes {
                let _ = writeln!(m, "- {n}");
            }
        }
        m
    }
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> RunReport {
        RunReport {
            target: "local".into(),
            machine: "test".into(),
            started: "2026-12-04T00:00:00Z".into(),
            scenarios: vec![
                ScenarioReport {
                    number: 1,
                    name: "golden",
                    title: "golden case",
                    outcome: Outcome::Pass,
                    elapsed: Duration::from_secs(3),
                    timings: vec![("lock".into(), Duration::from_millis(1500))],
                    lost: 0,
                    notes: vec!["a <note> & more".into()],
                },
                ScenarioReport {
                    number: 8,
                    name: "clock",
                    title: "clock steps",
                    outcome: Outcome::Skip("no clock \"here\"".into()),
                    elapsed: Duration::ZERO,
                    timings: vec![],
                    lost: 0,
                    notes: vec![],
                },
                ScenarioReport {
                    number: 2,
                    name: "power",
                    title: "power | cuts",
                    outcome: Outcome::Fail("lost a lock".into()),
                    elapsed: Duration::from_secs(1),
                    timings: vec![],
                    lost: 1,
                    notes: vec![],
                },
            ],
        }
    }

    #[test]
    fn junit_counts_and_escapes() {
        let x = report().junit();
        assert!(x.contains("tests=\"3\" failures=\"1\" skipped=\"1\""), "{x}");
        assert!(x.contains("a &lt;note&gt; &amp; more"), "{x}");
        assert!(x.contains("<skipped message=\"no clock &quot;here&quot;\"/>"), "{x}");
        assert!(x.contains("<failure message=\"lost a lock\"/>"), "{x}");
    }

    #[test]
    fn markdown_has_one_row_per_scenario_and_the_losses() {
        let m = report().markdown();
        assert!(m.contains("1 passed, 1 failed, 1 skipped; lost in all: 1"), "{m}");
        assert!(m.contains("| 2 | power \\| cuts | **FAIL** |"), "{m}");
        assert!(m.contains("Skipped: no clock \"here\""), "{m}");
        assert!(m.contains("lock 1.5 s"), "{m}");
    }
}
